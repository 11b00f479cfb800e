// goldrelay console: the summary view — the judgement over a period, drawn
// as SVG made with DOM calls (the CSP allows no inline markup or style).
// Loaded before app.js, whose helpers ($, el, api, state, say) it calls.
'use strict';

// ---- summary: the judgement over a period, drawn as SVG ----
// Every chart is made with DOM calls and coloured by class (the policy allows
// no inline style), carries a <title> per mark, and has a table beside it.

const SVG_NS = 'http://www.w3.org/2000/svg';
const VERDICTS = ['as_drafted', 'edited', 'rejected'];

function svgEl(tag, attributes, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, String(value));
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// An <svg> of viewBox `width`×`height` named by `label` for screen readers.
function chart(width, height, label) {
  const root = svgEl('svg', { viewBox: '0 0 ' + width + ' ' + height, role: 'img', 'aria-label': label, class: 'chart' });
  root.append(svgEl('title', null, label));
  return root;
}

function percent(share) {
  return share === null || share === undefined ? '–' : Math.round(share * 100) + ' %';
}

function duration(ms) {
  if (ms === null || ms === undefined) return '–';
  if (ms < 1000) return ms + ' ms';
  if (ms < 120000) return (ms / 1000).toFixed(1) + ' s';
  return (ms / 60000).toFixed(1) + ' min';
}

// Decisions per day, one stacked bar a day: as drafted at the foot, then
// edited, then rejected.
function dayChart(days) {
  const [width, height, left, right, bottom, top] = [640, 220, 34, 18, 22, 8];
  const root = chart(width, height, 'Decisions per day by verdict');
  const most = Math.max(1, ...days.map((d) => d.as_drafted + d.edited + d.rejected));
  const plot = height - bottom - top;
  const step = (width - left - right) / Math.max(1, days.length);
  const y = (n) => top + plot - (n / most) * plot;
  for (const n of [0, most]) {
    root.append(svgEl('line', { x1: left, x2: width - right, y1: y(n), y2: y(n), class: 'grid' }));
    root.append(svgEl('text', { x: left - 4, y: y(n) + 4, class: 'tick end' }, n));
  }
  days.forEach((day, i) => {
    let base = 0;
    for (const verdict of VERDICTS) {
      const count = day[verdict];
      if (count > 0) {
        const bar = svgEl('rect', {
          x: left + i * step + step * 0.15, width: Math.max(1, step * 0.7),
          y: y(base + count), height: y(base) - y(base + count),
          class: 'mark v-' + verdict, 'data-day': day.day, 'data-verdict': verdict, 'data-count': count,
        });
        bar.append(svgEl('title', null, day.day + ': ' + count + ' ' + VERDICT_NAMES[verdict]));
        root.append(bar);
      }
      base += count;
    }
  });
  const labelled = days.length <= 8 ? days.map((_, i) => i) : [0, Math.floor(days.length / 2), days.length - 1];
  for (const i of labelled) {
    root.append(svgEl('text', { x: left + (i + 0.5) * step, y: height - 6, class: 'tick middle' }, days[i].day.slice(5)));
  }
  return root;
}

// The period's decisions as one bar split by verdict, each part labelled.
function shareChart(summary) {
  const [width, height] = [640, 64];
  const root = chart(width, height, 'Share of drafts approved as drafted, edited and rejected');
  let x = 0;
  VERDICTS.forEach((verdict, i) => {
    const share = summary.shares[verdict] || 0;
    const part = svgEl('rect', { x: x * width, y: 0, width: share * width, height: 28, class: 'mark v-' + verdict, 'data-verdict': verdict, 'data-share': share });
    part.append(svgEl('title', null, VERDICT_NAMES[verdict] + ': ' + percent(summary.shares[verdict]) + ' (' + summary.totals[verdict] + ')'));
    root.append(part);
    const key = (i * width) / 3;
    root.append(svgEl('rect', { x: key, y: 41, width: 10, height: 10, class: 'v-' + verdict }),
      svgEl('text', { x: key + 14, y: 50, class: 'legend', 'data-verdict': verdict },
        VERDICT_NAMES[verdict] + ' ' + percent(summary.shares[verdict])));
    x += share;
  });
  return root;
}

// Acceptance to delivery, median and 95th percentile, as two bars.
function deliveryChart(delivery) {
  const [width, height, left] = [640, 76, 110];
  const root = chart(width, height, 'Time from acceptance to delivery: median and 95th percentile');
  const longest = Math.max(1, delivery.p95_ms || 0, delivery.median_ms || 0);
  [['median', delivery.median_ms], ['95th percentile', delivery.p95_ms]].forEach(([name, ms], i) => {
    const y = 6 + i * 34;
    root.append(svgEl('text', { x: 0, y: y + 17, class: 'tick' }, name));
    const length = ms === null ? 0 : Math.max(2, (ms / longest) * (width - left - 90));
    const bar = svgEl('rect', { x: left, y, width: length, height: 24, class: 'mark delivery', 'data-ms': ms === null ? '' : ms });
    bar.append(svgEl('title', null, name + ': ' + duration(ms)));
    root.append(bar, svgEl('text', { x: left + length + 6, y: y + 17, class: 'tick value' }, duration(ms)));
  });
  return root;
}

// The same numbers in words, for a screen reader and a quick read.
function summaryText(summary) {
  const total = summary.totals.as_drafted + summary.totals.edited + summary.totals.rejected;
  if (total === 0) return 'No decisions from ' + summary.from + ' to ' + summary.to + '.';
  return total + ' decisions from ' + summary.from + ' to ' + summary.to + ': ' +
    VERDICTS.map((v) => summary.totals[v] + ' ' + VERDICT_NAMES[v] + ' (' + percent(summary.shares[v]) + ')').join(', ') +
    '. Median edit distance ' + (summary.median_edit_distance === null ? '–' : summary.median_edit_distance + ' words') +
    '. ' + summary.delivery.delivered + ' delivered: median ' + duration(summary.delivery.median_ms) +
    ', 95th percentile ' + duration(summary.delivery.p95_ms) + ' from acceptance.';
}

function dayTable(days) {
  const rows = days.filter((d) => d.as_drafted + d.edited + d.rejected > 0).map((d) => {
    const row = el('tr');
    row.append(el('th', d.day), ...VERDICTS.map((v) => el('td', d[v])));
    return row;
  });
  if (rows.length) return rows;
  const none = el('td', 'No decisions in this period.', 'muted');
  none.colSpan = 4;
  const row = el('tr');
  row.append(none);
  return [row];
}

function drawSummary(summary) {
  $('summary-text').textContent = summaryText(summary);
  $('chart-days').replaceChildren(dayChart(summary.days));
  $('chart-shares').replaceChildren(shareChart(summary));
  $('chart-delivery').replaceChildren(deliveryChart(summary.delivery));
  $('stat-edit').textContent = summary.median_edit_distance === null ? '–' : summary.median_edit_distance + ' words';
  $('stat-median').textContent = duration(summary.delivery.median_ms);
  $('stat-p95').textContent = duration(summary.delivery.p95_ms);
  $('summary-rows').replaceChildren(...dayTable(summary.days));
  $('summary-result').hidden = false;
}

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

async function loadSummary() {
  if (!$('summary-to').value) $('summary-to').value = isoDay(new Date());
  if (!$('summary-from').value) $('summary-from').value = isoDay(new Date(Date.now() - 29 * 86400000));
  const query = new URLSearchParams({ from: $('summary-from').value, to: $('summary-to').value });
  if (state.draftField !== 'text') query.set('draft_field', state.draftField);
  const account = $('summary-account').value || state.account;
  if (account) {
    query.set('account_id', account);
    $('summary-account').value = account;
  }
  try {
    drawSummary(await api('/api/gold-replies/summary?' + query));
  } catch (e) {
    failed(e);
  }
}

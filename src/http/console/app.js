// goldrelay console. Every value from the API is put on the page with
// textContent: a reply containing markup shows the markup and never runs it.
'use strict';

const state = {
  token: null, // memory only: never stored, never sent anywhere but this origin
  view: 'conversation',
  account: null,
  conversation: null,
  cursor: null,
  draftField: 'text', // where a draft's text is read (#draft_field=output.text)
};

const $ = (id) => document.getElementById(id);

// An element with text; never parses markup.
function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : '';
}

function say(text) {
  $('message').textContent = text || '';
}

// The fragment carries the token and where to look
// (#token=…&view=operator|summary&account=…&conversation=…&draft_field=…).
// The token is taken out of the address bar at once, so it is in no history
// entry, bookmark or screenshot.
function readFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get('token')) state.token = params.get('token');
  if (['operator', 'summary'].includes(params.get('view'))) state.view = params.get('view');
  state.account = Number(params.get('account')) || state.account;
  state.conversation = Number(params.get('conversation')) || state.conversation;
  if (params.get('draft_field')) state.draftField = params.get('draft_field');
  params.delete('token');
  history.replaceState(null, '', location.pathname + location.search + (params.toString() ? '#' + params : ''));
}

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

// After a 429 no request leaves before `until`: goldrelay's Retry-After, and
// at least 1, 2, 4 … 60 s for each 429 in a row.
const pace = { until: 0, strikes: 0, timer: null };

async function api(path, options = {}) {
  if (Date.now() < pace.until) throw new ApiError(429, 'slowing down');
  const response = await fetch(path, {
    ...options,
    headers: { Authorization: 'Bearer ' + state.token, Accept: 'application/json' },
  });
  if (response.status === 429) {
    slowDown(response.headers.get('Retry-After'));
    throw new ApiError(429, 'slowing down');
  }
  pace.strikes = 0;
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, body.detail || response.statusText);
  return body;
}

// Up to a quarter more than the wait, so a team's consoles throttled together
// do not all come back in the same second.
function slowDown(retryAfter) {
  const now = Date.now();
  const asked = retryAfterMs(retryAfter);
  if (now < pace.until) {
    // Answers to requests sent together are one 429, not several in a row.
    pace.until = Math.max(pace.until, now + asked);
    return;
  }
  const wait = Math.max(asked, Math.min(60, 2 ** pace.strikes) * 1000);
  pace.strikes += 1;
  pace.until = now + wait + Math.random() * wait / 4;
}

// Retry-After is seconds or an HTTP date; goldrelay sends seconds.
function retryAfterMs(value) {
  const seconds = Number(value);
  if (value && Number.isFinite(seconds) && seconds >= 0) return seconds * 1000;
  const date = Date.parse(value || '');
  return Number.isFinite(date) ? Math.max(0, date - Date.now()) : 1000;
}

function failed(error) {
  if (error.status === 401) {
    state.token = null;
    say('The token was refused. Enter a viewer or operator token.');
    askToken();
    return;
  }
  if (error.status === 429) return refreshLater();
  say(error.message);
}

// Shows the view again once the wait is over: a read, never a retry a person
// asked for (they ask again).
function refreshLater() {
  const left = Math.max(0, pace.until - Date.now());
  say('goldrelay asked the console to slow down; trying again in ' + Math.max(1, Math.ceil(left / 1000)) + ' s');
  if (pace.timer) return;
  pace.timer = setTimeout(() => {
    pace.timer = null;
    show(state.view);
  }, left);
}

// ---- header: /hc's verdict ----

async function checkHealth() {
  const pill = $('health');
  try {
    const response = await fetch('/hc');
    const body = await response.json();
    const worker = body.worker && body.worker.status;
    pill.textContent = 'relay ' + body.status + (worker ? ' · worker ' + worker : '');
    pill.className = 'pill health-' + (body.status === 'ok' ? 'ok' : 'unavailable');
  } catch (e) {
    pill.textContent = 'relay unreachable';
    pill.className = 'pill health-unavailable';
  }
}

// ---- token ----

function askToken() {
  $('token-form').hidden = false;
  $('conversation-view').hidden = true;
  $('operator-view').hidden = true;
  $('summary-view').hidden = true;
  $('token-input').focus();
}

// ---- views ----

function show(view) {
  state.view = view;
  if (!state.token) return askToken();
  $('token-form').hidden = true;
  $('conversation-view').hidden = view !== 'conversation';
  $('operator-view').hidden = view !== 'operator';
  $('summary-view').hidden = view !== 'summary';
  $('show-conversation').setAttribute('aria-pressed', String(view === 'conversation'));
  $('show-operator').setAttribute('aria-pressed', String(view === 'operator'));
  $('show-summary').setAttribute('aria-pressed', String(view === 'summary'));
  say('');
  if (view === 'conversation' && state.account && state.conversation) loadConversation();
  if (view === 'operator') loadOperator(true);
  if (view === 'summary') loadSummary();
}

// The last error as a person would say it; the raw text follows for support.
function plainError(reply) {
  const raw = reply.last_error;
  if (!raw) return null;
  const rules = [
    [/\b404\b/, 'Chatwoot does not know this conversation or account.'],
    [/\b401\b|\b403\b/, 'Chatwoot refused goldrelay\'s API token.'],
    [/\b422\b/, 'Chatwoot refused the message as invalid.'],
    [/\b429\b/, 'Chatwoot asked goldrelay to slow down.'],
    [/\b5\d\d\b/, 'Chatwoot had an internal error.'],
    [/timed? ?out|timeout/i, 'Chatwoot did not answer in time.'],
    [/connect|reset|refused/i, 'goldrelay could not reach Chatwoot.'],
    [/age|too old/i, 'The reply waited too long to be sent.'],
  ];
  const found = rules.find(([pattern]) => pattern.test(raw));
  return (found ? found[1] + ' ' : '') + '(' + raw + ')';
}

function statusPill(status) {
  return el('span', status, 'pill status status-' + status);
}

// accepted → each attempt → delivered → confirmed → channel status
function timeline(reply) {
  const list = el('ul', null, 'history');
  const step = (text) => list.append(el('li', text));
  step('accepted ' + when(reply.received_at));
  if (reply.attempts > 0) step(reply.attempts + (reply.attempts === 1 ? ' attempt' : ' attempts'));
  if (reply.status === 'queued' && reply.next_attempt_at) step('next attempt ' + when(reply.next_attempt_at));
  if (reply.delivered_at) step('delivered to Chatwoot ' + when(reply.delivered_at) + (reply.chatwoot_message_id ? ' (message ' + reply.chatwoot_message_id + ')' : ''));
  if (reply.confirmed_at) step('confirmed by Chatwoot ' + when(reply.confirmed_at));
  if (reply.channel_status) step('channel: ' + reply.channel_status + (reply.channel_error ? ' — ' + reply.channel_error : ''));
  if (reply.uncertain) step('an attempt may have created the message: a retry looks for it first');
  return list;
}

// ---- the judgement: the AI draft beside the text a person approved ----

// The draft's text at the fragment's draft_field (a dot-separated path of
// keys, `text` by default), as the export and the summary read it.
function draftText(reply) {
  let value = reply.draft;
  for (const key of state.draftField.split('.')) {
    if (value === null || typeof value !== 'object' || Array.isArray(value) || !Object.hasOwn(value, key)) return null;
    value = value[key];
  }
  return typeof value === 'string' ? value : null;
}

// As goldrelay judges it (src/dataset/verdict.rs): a rejected draft is
// rejected; an approved one is as drafted when its text is the draft's, ends'
// whitespace aside, and edited otherwise (also when there was no draft).
function verdictOf(reply) {
  if (reply.action === 'reject') return 'rejected';
  const draft = draftText(reply);
  return draft !== null && draft.trim() === reply.content.trim() ? 'as_drafted' : 'edited';
}

const VERDICT_NAMES = { as_drafted: 'approved as drafted', edited: 'edited', rejected: 'rejected' };

// A text as words, each with the whitespace that follows it, so that a side
// can be drawn back exactly as written. Text that begins with whitespace
// gives a first word of ''.
function words(text) {
  const parts = text.split(/(\s+)/);
  const tokens = [];
  for (let i = 0; i < parts.length; i += 2) {
    if (parts[i] !== '' || parts[i + 1]) tokens.push({ word: parts[i], space: parts[i + 1] || '' });
  }
  return tokens;
}

// Past this many cells (middle words of one side × the other's) the middle
// is marked changed as a whole: a table that size would stall the page.
const DIFF_CELLS = 4000000;

// Which words of `a` and of `b` both keep, in order: their longest common
// subsequence, after the shared start and end are set aside.
function commonWords(a, b) {
  const keepA = a.map(() => false);
  const keepB = b.map(() => false);
  let head = 0;
  while (head < a.length && head < b.length && a[head] === b[head]) keepA[head] = keepB[head++] = true;
  let tail = 0;
  while (tail < a.length - head && tail < b.length - head && a[a.length - 1 - tail] === b[b.length - 1 - tail]) {
    keepA[a.length - 1 - tail] = keepB[b.length - 1 - tail] = true;
    tail++;
  }
  const n = a.length - head - tail;
  const m = b.length - head - tail;
  if (n === 0 || m === 0 || n * m > DIFF_CELLS) return [keepA, keepB];
  // after[i * (m + 1) + j]: the longest common run of a[head+i..] and b[head+j..].
  const after = new Uint32Array((n + 1) * (m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      after[i * (m + 1) + j] = a[head + i] === b[head + j]
        ? after[(i + 1) * (m + 1) + j + 1] + 1
        : Math.max(after[(i + 1) * (m + 1) + j], after[i * (m + 1) + j + 1]);
    }
  }
  for (let i = 0, j = 0; i < n && j < m;) {
    if (a[head + i] === b[head + j]) {
      keepA[head + i++] = keepB[head + j++] = true;
    } else if (after[(i + 1) * (m + 1) + j] >= after[i * (m + 1) + j + 1]) {
      i++;
    } else {
      j++;
    }
  }
  return [keepA, keepB];
}

// The words of `before` a person removed or replaced, and those of `after`
// they wrote: { removed: [...], added: [...] }, each in order.
function wordDiff(before, after) {
  const a = words(before);
  const b = words(after);
  const [keepA, keepB] = commonWords(a.map((t) => t.word), b.map((t) => t.word));
  return {
    before: a.map((t, i) => ({ ...t, changed: !keepA[i] && t.word !== '' })),
    after: b.map((t, i) => ({ ...t, changed: !keepB[i] && t.word !== '' })),
  };
}

// One side of the diff: changed words in `tag` (del or ins), the rest as text.
function markedText(tokens, tag, className) {
  const box = el('div', null, 'text ' + className);
  for (const t of tokens) {
    box.append(t.changed ? el(tag, t.word, 'changed') : t.word);
    if (t.space) box.append(t.space);
  }
  return box;
}

function side(label, body, className) {
  const column = el('div', null, 'side ' + className);
  column.append(el('div', label, 'side-label'), body);
  return column;
}

// The draft beside the approved text, changed words marked on both sides.
// Without a draft a person wrote every word: the text alone, nothing marked.
function judgement(reply, verdict) {
  const decided = verdict === 'rejected' ? 'Rejected text' : 'Approved text';
  const draft = draftText(reply);
  if (draft === null) {
    const alone = el('div', null, 'judgement single');
    alone.append(side(decided + ' · no AI draft was sent', markedText(words(reply.content), 'ins', 'content'), 'approved'));
    return alone;
  }
  const diff = wordDiff(draft, reply.content);
  const box = el('div', null, 'judgement');
  box.append(side('AI draft', markedText(diff.before, 'del', 'draft-text'), 'draft'),
    side(decided, markedText(diff.after, 'ins', 'content'), 'approved'));
  return box;
}

function conversationCard(reply) {
  const card = el('li', null, 'card reply');
  card.dataset.replyId = reply.reply_id;
  const verdict = verdictOf(reply);
  card.dataset.verdict = verdict;
  const head = el('div', null, 'head');
  head.append(el('span', reply.reply_id, 'id'), el('span', VERDICT_NAMES[verdict], 'pill verdict verdict-' + verdict),
    el('span', reply.action, 'pill'), statusPill(reply.status));
  card.append(head, judgement(reply, verdict));
  const decider = reply.approved_by ? (verdict === 'rejected' ? 'rejected by ' : 'approved by ') + reply.approved_by : 'approver not given';
  card.append(el('div', decider + (reply.private ? ' · private note' : ''), 'meta decider'));
  card.append(timeline(reply));
  const error = plainError(reply);
  if (error) card.append(el('p', error, 'error'));
  return card;
}

async function loadConversation() {
  $('account').value = state.account;
  $('conversation').value = state.conversation;
  $('conversation-title').textContent = 'Conversation ' + state.conversation + ' (account ' + state.account + ')';
  try {
    const body = await api('/api/accounts/' + state.account + '/conversations/' + state.conversation + '/gold-replies');
    $('replies').replaceChildren(...body.items.map(conversationCard));
    $('conversation-empty').hidden = body.items.length > 0;
    if (body.truncated) say('Showing the first ' + body.items.length + ' replies only.');
  } catch (e) {
    failed(e);
  }
}

function operatorCard(reply) {
  const card = el('li', null, 'card op');
  card.dataset.replyId = reply.reply_id;
  const head = el('div', null, 'head');
  head.append(el('span', reply.reply_id, 'id'), statusPill(reply.status));
  card.append(head);
  card.append(el('div', 'account ' + reply.account_id + ' · conversation ' + reply.conversation_id + ' · ' + reply.attempts + (reply.attempts === 1 ? ' attempt' : ' attempts') + ' · accepted ' + when(reply.received_at), 'meta'));
  if (reply.status === 'queued' && reply.next_attempt_at) card.append(el('div', 'next attempt ' + when(reply.next_attempt_at), 'meta'));
  const error = plainError(reply);
  if (error) card.append(el('p', error, 'error'));
  if (reply.status === 'dead') {
    const retry = el('button', 'Retry…', 'retry');
    retry.type = 'button';
    retry.addEventListener('click', () => confirmRetry(reply));
    card.append(retry);
  }
  return card;
}

async function loadOperator(fresh) {
  if (fresh) state.cursor = null;
  const query = new URLSearchParams({ limit: '25' });
  const status = $('status').value;
  if (status) query.set('status', status);
  if ($('op-account').value) query.set('account_id', $('op-account').value);
  if ($('op-conversation').value) query.set('conversation_id', $('op-conversation').value);
  if (state.cursor) query.set('cursor', state.cursor);
  try {
    const body = await api('/api/gold-replies?' + query);
    const cards = body.items.map(operatorCard);
    if (fresh) $('operator-list').replaceChildren(...cards);
    else $('operator-list').append(...cards);
    state.cursor = body.next_cursor;
    $('more').hidden = !state.cursor;
    $('operator-empty').hidden = $('operator-list').children.length > 0;
  } catch (e) {
    failed(e);
  }
}

// ---- retry, after a confirmation ----

let pendingRetry = null;

function confirmRetry(reply) {
  pendingRetry = reply;
  $('confirm-text').textContent = 'Send ' + reply.reply_id + ' to conversation ' + reply.conversation_id +
    ' again? If an earlier attempt may have created the message, goldrelay looks for it in Chatwoot before sending.';
  $('confirm').hidden = false;
  $('confirm-yes').focus();
}

async function retryConfirmed() {
  const reply = pendingRetry;
  $('confirm').hidden = true;
  pendingRetry = null;
  try {
    await api('/api/gold-replies/' + encodeURIComponent(reply.reply_id) + '/retry', { method: 'POST' });
    say(reply.reply_id + ' is queued again.');
    loadOperator(true);
  } catch (e) {
    if (e.status === 403) say('This token may not retry: only operator tokens can. (' + e.message + ')');
    else failed(e);
  }
}

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

// ---- theme: Chatwoot's, when it says which ----
// Chatwoot's Dashboard App context carries the resolved theme as
// data.theme, 'light' or 'dark', and is sent again when it changes
// (app/javascript/dashboard/components/widgets/DashboardApp/Frame.vue and its
// specs/Frame.spec.js). Anything else leaves the page as it is.

function onThemeMessage(event) {
  if (event.source !== window.parent || window.parent === window) return;
  let message = event.data;
  if (typeof message === 'string') {
    try { message = JSON.parse(message); } catch (e) { return; }
  }
  const theme = message && message.event === 'appContext' && message.data && message.data.theme;
  if (theme === 'dark' || theme === 'light') applyTheme(theme);
}

function applyTheme(theme) {
  document.body.classList.toggle('theme-dark', theme === 'dark');
  document.body.classList.toggle('theme-light', theme === 'light');
}

// ---- Chatwoot Dashboard App ----
// Chatwoot sends a JSON string
// {"event":"appContext","data":{"conversation":{...},"contact":{...},"currentAgent":{...}}}
// when the frame loads and whenever asked with 'chatwoot-dashboard-app:fetch-info'
// (app/javascript/dashboard/components/widgets/DashboardApp/Frame.vue). It does
// not announce a switch of conversation by itself in every version, so the
// console asks again now and then and whenever its tab is shown.

// The Chatwoot conversation last followed ("account/id"). Chatwoot is asked
// every 3 s; only a different conversation costs a request, so an empty
// conversation, an error or a 429 is not fetched again every 3 s.
let followed = null;

function onParentMessage(event) {
  if (event.source !== window.parent) return;
  let message = event.data;
  if (typeof message === 'string') {
    try { message = JSON.parse(message); } catch (e) { return; }
  }
  const conversation = message && message.event === 'appContext' && message.data && message.data.conversation;
  if (!conversation || !conversation.id || !conversation.account_id) return;
  const account = Number(conversation.account_id);
  const id = Number(conversation.id);
  if (account + '/' + id === followed) return;
  followed = account + '/' + id;
  state.account = account;
  state.conversation = id;
  show('conversation');
}

function askChatwoot() {
  window.parent.postMessage('chatwoot-dashboard-app:fetch-info', '*');
}

function joinChatwoot() {
  if (window.parent === window) return;
  document.body.classList.add('embedded');
  window.addEventListener('message', onParentMessage);
  askChatwoot();
  setInterval(askChatwoot, 3000);
  document.addEventListener('visibilitychange', () => {
    if (document.hidden) return;
    followed = null;
    askChatwoot();
  });
  window.addEventListener('focus', askChatwoot);
}

// ---- wiring ----

function start() {
  readFragment();
  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    state.token = $('token-input').value.trim();
    $('token-input').value = '';
    show(state.view);
  });
  $('conversation-form').addEventListener('submit', (e) => {
    e.preventDefault();
    state.account = Number($('account').value);
    state.conversation = Number($('conversation').value);
    loadConversation();
  });
  $('operator-form').addEventListener('submit', (e) => { e.preventDefault(); loadOperator(true); });
  $('more').addEventListener('click', () => loadOperator(false));
  $('show-conversation').addEventListener('click', () => show('conversation'));
  $('show-operator').addEventListener('click', () => show('operator'));
  $('show-summary').addEventListener('click', () => show('summary'));
  $('summary-form').addEventListener('submit', (e) => { e.preventDefault(); loadSummary(); });
  window.addEventListener('message', onThemeMessage);
  $('confirm-yes').addEventListener('click', retryConfirmed);
  $('confirm-no').addEventListener('click', () => { $('confirm').hidden = true; pendingRetry = null; });
  checkHealth();
  setInterval(checkHealth, 30000);
  joinChatwoot();
  show(state.view);
}

start();

// goldrelay console: the judgement on a card — the AI draft beside the text a
// person approved, the words they changed marked. Loaded before app.js, whose
// helpers (el, state) it calls; every value is placed with textContent.
'use strict';

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

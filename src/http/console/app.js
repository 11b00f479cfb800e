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
  // Coming back to the tab shows the conversation afresh, once.
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

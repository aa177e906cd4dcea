#!/usr/bin/env node
// Fidelity check of tribridge's Mattermost emulator with the official JS client (@mattermost/client):
// login -> getMe -> team/channel by name -> WebSocket (hello, auth challenge) -> createPost with
// pending_post_id -> own `posted` event -> patchPost -> `post_edited` -> addReaction ->
// `reaction_added` -> getPostsSince -> deletePost -> `post_deleted` -> getPost is 404.
// Started from the shared demo.js. Usage: node check.js BASE_URL USER PASSWORD TEAM CHANNEL
// Env: MM_CHECK_TIMEOUT_MS (default 20000). Exit 0 with a last line "OK" on success.
'use strict';
// Node 20 has no global WebSocket/CloseEvent; WebSocketClient uses both as globals.
globalThis.WebSocket ??= require('ws');
globalThis.CloseEvent ??= class CloseEvent extends Event {
  constructor(type, init = {}) { super(type); this.code = init.code; this.reason = init.reason ?? ''; this.wasClean = !!init.wasClean; }
};
const { Client4, WebSocketClient, WebSocketEvents } = require('@mattermost/client');

function check(cond, what) {
  if (!cond) throw new Error('check failed: ' + what);
  console.log('ok -', what);
}

async function main() {
  const [base, user, pw, teamName, chanName] = process.argv.slice(2);
  if (!chanName) throw new Error('usage: node check.js BASE_URL USER PASSWORD TEAM CHANNEL');
  const client = new Client4();
  client.setUrl(base);
  client.setIncludeCookies(false);
  client.setUserAgent('tribridge-tests/0.1');

  const profile = await client.login(user, pw);
  check(profile.username === user && client.getToken().length === 26, 'login returns the user and a 26-char Token header');
  const me = await client.getMe();
  check(me.id === profile.id, 'getMe with Authorization: BEARER');
  const team = await client.getTeamByName(teamName);
  const channel = await client.getChannelByName(team.id, chanName);
  check(channel.team_id === team.id && channel.name === chanName, 'team and channel by name');
  const config = await client.getClientConfig();
  check(config.MaxPostSize === '16383' && typeof config.Version === 'string', 'client config (format=old) is a map of strings');

  // Collect every event; waiters look through them with deadlines.
  const events = [];
  const waiters = [];
  const ws = new WebSocketClient({ clientPingInterval: 30000, minWebSocketRetryTime: 1000 });
  let lastSeq = -1;
  let seqOk = true;
  ws.addMessageListener((msg) => {
    console.log('ws event', msg.event, 'seq', msg.seq);
    if (msg.seq !== lastSeq + 1) seqOk = false;
    lastSeq = msg.seq;
    events.push(msg);
    for (const w of waiters.slice()) if (w.pred(msg)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(msg); }
  });
  const waitFor = (what, pred) => {
    const found = events.find(pred);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('timed out waiting for ' + what)), 10000);
      waiters.push({ pred, resolve: (m) => { clearTimeout(t); resolve(m); } });
    });
  };
  const opened = new Promise((resolve) => ws.addFirstConnectListener(resolve));
  ws.initialize(base.replace(/^http/, 'ws') + '/api/v4/websocket', client.getToken());
  await opened;
  const hello = await waitFor('hello', (m) => m.event === WebSocketEvents.Hello);
  check(hello.seq === 0 && hello.data.connection_id.length === 26 && hello.broadcast.user_id === me.id, 'hello first, seq 0, own user id');

  const text = `hello from @mattermost/client ${Date.now()}`;
  const pending = `${me.id}:${Date.now()}`;
  const postedP = waitFor('posted', (m) => m.event === WebSocketEvents.Posted && JSON.parse(m.data.post).message === text);
  const post = await client.createPost({ channel_id: channel.id, message: text, pending_post_id: pending });
  check(post.id.length === 26 && post.pending_post_id === pending, 'createPost echoes pending_post_id');
  const posted = await postedP;
  const echoed = JSON.parse(posted.data.post);               // data.post is a JSON *string*
  check(typeof posted.data.post === 'string' && echoed.id === post.id && echoed.pending_post_id === pending, 'posted event carries the post as a JSON string with pending_post_id');
  check(posted.data.channel_name === chanName && posted.data.team_id === team.id && posted.data.sender_name === '@' + user, 'posted event metadata');

  const editedP = waitFor('post_edited', (m) => m.event === WebSocketEvents.PostEdited && JSON.parse(m.data.post).id === post.id);
  const edited = await client.patchPost({ id: post.id, message: text + ' (edited)' });
  check(edited.message === text + ' (edited)' && edited.edit_at > 0, 'patchPost edits');
  const editedEv = JSON.parse((await editedP).data.post);
  check(editedEv.message === text + ' (edited)', 'post_edited event with the new message');

  const reactionP = waitFor('reaction_added', (m) => m.event === WebSocketEvents.ReactionAdded);
  await client.addReaction(me.id, post.id, 'thumbsup');
  const reaction = JSON.parse((await reactionP).data.reaction);
  check(reaction.post_id === post.id && reaction.emoji_name === 'thumbsup', 'reaction_added event');

  const since = await client.getPostsSince(channel.id, post.create_at - 1);
  const history = Object.values(since.posts).filter((p) => p.original_id === post.id);
  check(since.order.includes(post.id) && history.length === 1 && history[0].delete_at > 0, 'getPostsSince includes the edit-history row');

  const deletedP = waitFor('post_deleted', (m) => m.event === WebSocketEvents.PostDeleted && JSON.parse(m.data.post).id === post.id);
  const del = await client.deletePost(post.id);
  check(del.status === 'OK', 'deletePost');
  await deletedP;
  check(true, 'post_deleted event');
  let status = 0;
  try { await client.getPost(post.id); } catch (e) { status = e.status_code; }
  check(status === 404, 'getPost of a deleted post is 404 (ClientError with status_code)');
  check(seqOk, 'event seq numbers are consecutive from 0');
  ws.close();
}

const ms = Number(process.env.MM_CHECK_TIMEOUT_MS || 20000);
setTimeout(() => { console.error(`FAILED: no result within ${ms} ms`); process.exit(1); }, ms).unref();
main().then(() => { console.log('OK'); process.exit(0); }, (e) => { console.error('FAILED', e); process.exit(1); });

#!/usr/bin/env node
// Fidelity check of the emulator's user administration with the official JS client
// (@mattermost/client), as a bridge creating "remote users" drives it: createUser (admin) with
// username rules and their error ids -> addToTeam/addToChannel -> patchUser (props) ->
// uploadProfileImage -> createUserAccessToken -> a post with that token is the user's ->
// revokeUserAccessToken -> the token is refused -> deactivation (DELETE /users/{id}) -> a
// non-admin may neither create users nor other people's tokens.
// Usage: node users.js BASE_URL ADMIN ADMIN_PASSWORD USER USER_PASSWORD TEAM CHANNEL
// Exit 0 with a last line "OK" on success.
'use strict';
const { Client4 } = require('@mattermost/client');

function check(cond, what) {
  if (!cond) throw new Error('check failed: ' + what);
  console.log('ok -', what);
}

function client(base) {
  const c = new Client4();
  c.setUrl(base);
  c.setIncludeCookies(false);
  c.setUserAgent('tribridge-tests/0.1');
  return c;
}

async function refused(promise) {
  try {
    await promise;
  } catch (e) {
    return { status: e.status_code, id: e.server_error_id };
  }
  return null;
}

// A 1x1 PNG.
const PNG = Buffer.from('89504e470d0a1a0a0000000d4948445200000001000000010806000000' +
  '1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a5f5d9f30000000049454e44ae426082', 'hex');

async function main() {
  const [base, admin, adminPw, user, userPw, teamName, chanName] = process.argv.slice(2);
  if (!chanName) throw new Error('usage: node users.js BASE_URL ADMIN ADMIN_PASSWORD USER USER_PASSWORD TEAM CHANNEL');
  const a = client(base);
  await a.login(admin, adminPw);
  const team = await a.getTeamByName(teamName);
  const channel = await a.getChannelByName(team.id, chanName);

  const bad = await refused(a.createUser({ username: '9lives', email: 'x@bridge.invalid', password: 'Passw0rd-long' }));
  check(bad && bad.status === 400 && bad.id === 'model.user.is_valid.username.app_error', 'a username not starting with a letter is 400 model.user.is_valid.username.app_error');
  const long = await refused(a.createUser({ username: 'longname', email: 'l@bridge.invalid', password: 'Passw0rd-long', nickname: 'n'.repeat(65) }));
  check(long && long.status === 400 && long.id === 'model.user.is_valid.nickname.app_error', 'a nickname over 64 characters is 400 model.user.is_valid.nickname.app_error');
  const created = await a.createUser({ username: 'alice-irc', email: 'alice-irc@bridge.invalid', password: 'Passw0rd-long', nickname: 'alice', first_name: 'alice', props: { tribridge_remote: 'irc/alice' } });
  check(created.username === 'alice-irc' && created.id.length === 26 && created.nickname === 'alice', 'an admin creates a user');
  check(created.props && created.props.tribridge_remote === 'irc/alice', 'props given at creation are kept');
  const dup = await refused(a.createUser({ username: 'alice-irc', email: 'other@bridge.invalid', password: 'Passw0rd-long' }));
  check(dup && dup.status === 400 && dup.id === 'app.user.save.username_exists.app_error', 'a taken username is 400 app.user.save.username_exists.app_error');

  const tm = await a.addToTeam(team.id, created.id);
  check(tm.user_id === created.id && tm.team_id === team.id, 'addToTeam');
  const cm = await a.addToChannel(created.id, channel.id);
  check(cm.user_id === created.id && cm.channel_id === channel.id, 'addToChannel');

  const patched = await a.patchUser({ id: created.id, nickname: 'Alice', props: { tribridge_remote: 'irc' } });
  check(patched.nickname === 'Alice' && patched.props && patched.props.tribridge_remote === 'irc', 'patchUser sets nickname and props');

  const up = await a.uploadProfileImage(created.id, new Blob([PNG], { type: 'image/png' }));
  check(up.status === 'OK', 'uploadProfileImage');
  const after = await a.getUser(created.id);
  check(after.last_picture_update > 0, 'last_picture_update is set');

  const tok = await a.createUserAccessToken(created.id, 'tribridge');
  check(tok.user_id === created.id && tok.token.length === 26, 'an admin creates a token for another user');
  const as = client(base);
  as.setToken(tok.token);
  const me = await as.getMe();
  check(me.id === created.id, 'the token authenticates as that user');
  const post = await as.createPost({ channel_id: channel.id, message: 'hi from alice', pending_post_id: created.id + ':1' });
  check(post.user_id === created.id && !(post.props && post.props.from_bot), 'a post with the token is the user\'s own post');

  const u = client(base);
  await u.login(user, userPw);
  const noCreate = await refused(u.createUser({ username: 'mallory-x', email: 'm@bridge.invalid', password: 'Passw0rd-long' }));
  check(noCreate && noCreate.status === 403, 'a non-admin cannot create users (403)');
  const noToken = await refused(u.createUserAccessToken(created.id, 'x'));
  check(noToken && noToken.status === 403 && noToken.id === 'api.context.permissions.app_error', 'a non-admin cannot create another user\'s token (403)');

  const rv = await a.revokeUserAccessToken(tok.id);
  check(rv.status === 'OK', 'revokeUserAccessToken');
  const gone = await refused(as.getMe());
  check(gone && gone.status === 401, 'a revoked token is refused (401)');

  const tok2 = await a.createUserAccessToken(created.id, 'tribridge');
  const as2 = client(base);
  as2.setToken(tok2.token);
  await as2.getMe();
  const del = await a.doFetch(a.getUserRoute(created.id), { method: 'delete' });
  check(del.status === 'OK', 'DELETE /users/{id} deactivates');
  const deact = await a.getUser(created.id);
  check(deact.delete_at > 0, 'the user has delete_at');
  const dead = await refused(as2.getMe());
  check(dead && dead.status === 401, 'a deactivated user\'s token is refused (401)');
  console.log('OK');
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});

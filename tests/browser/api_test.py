"""The orchestrator without a browser: announce and heartbeats from real
engines, health on a stalled and on a killed engine, engines reconnecting to
a restarted orchestrator, an engine with the wrong secret kept out, a
migration through the API checked with migratectl, and every API error case.
Prints TAP; exit 0 when every check passed.
"""
import argparse
import http.client
import json
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster  # noqa: E402

checks = []


def check(name, cond, detail=''):
    checks.append((name, bool(cond)))
    print('%s %d - %s%s' % ('ok' if cond else 'not ok', len(checks), name,
                            '' if cond or not detail else ' # ' + str(detail)), flush=True)


def main():
    ap = argparse.ArgumentParser()
    for a in ('orchestrator', 'server', 'migratectl', 'web', 'workdir'):
        ap.add_argument('--' + a, required=True)
    ap.add_argument('--probe', required=True)
    ap.add_argument('--certs', required=True)
    args = ap.parse_args()
    c = Cluster(args, args.workdir, 'api-test')
    try:
        run(c)
    finally:
        c.close()
    c = Cluster(args, args.workdir, 'api-test-tls')
    try:
        run_tls(c, args.certs)
    finally:
        c.close()
    print('1..%d' % len(checks))
    return 0 if all(ok for _, ok in checks) else 1


def run(c):
    hb = 300
    c.start_orchestrator()
    c.start_engine('A', users=['alice', 'bob'], heartbeat_ms=hb)
    c.start_engine('B', heartbeat_ms=hb)
    # An engine with another cluster secret must never get in.
    other = os.path.join(c.dir, 'other-secret')
    with open(other, 'w') as f:
        f.write('x' * 64 + '\n')
    c.start_engine('intruder', users=['mallory'], heartbeat_ms=hb, secret=other)

    c.wait_for('both engines healthy', lambda: c.health('A') == 'healthy' and c.health('B') == 'healthy')
    c.wait_for('users of A', lambda: len([u for u in c.api('/api/users')[1] if u['engine'] == 'A']) == 2)
    status, engines = c.api('/api/engines')
    a = [e for e in engines if e['id'] == 'A'][0]
    check('announce carries id, URL, version, heartbeat', status == 200 and
          a['url'] == c.engine_url('A') and a['version'] and a['heartbeat_ms'] == hb and
          a['connected'] is True, a)
    check('heartbeat carries the user count', a['users'] == 2, a)
    def intruder_refused():
        with open(os.path.join(c.dir, 'engine-intruder.log')) as f:
            return 'authentication failed' in f.read()
    c.wait_for('the intruder to be refused', intruder_refused)
    check('an engine with the wrong secret is refused and not registered',
          all(e['id'] != 'intruder' for e in c.api('/api/engines')[1]) and
          all(u['user'] != 'mallory' for u in c.api('/api/users')[1]))

    # ---------------------------------------------------------------- bad engines
    # Authenticated with the right secret but misbehaving: each is cut off
    # with a reason, never registered, and the real engines are untouched.
    for scenario, expect in (('mismatch', 'announced another engine id'),
                             ('early', 'heartbeat before announce'),
                             ('foreign', 'unexpected frame'),
                             ('invalid', 'heartbeat_ms')):
        r = subprocess.run([c.args.probe, c.engines_url, c.secret, 'probe-' + scenario, scenario],
                           capture_output=True, text=True, timeout=20)
        check('bad engine (%s) is disconnected: %s' % (scenario, r.stdout.strip()),
              r.returncode == 0 and expect in r.stdout, (r.returncode, r.stdout, r.stderr))
    names = [e['id'] for e in c.api('/api/engines')[1]]
    check('no misbehaving engine registered', sorted(names) == ['A', 'B'], names)
    check('real engines still healthy', c.health('A') == 'healthy' and c.health('B') == 'healthy')

    # ---------------------------------------------------------------- API errors
    s, b = c.api('/api/engines', token=False)
    check('no token: 401', s == 401 and 'token' in b['error'], (s, b))
    s, b = c.api('/api/engines', token='wrong-token-wrong-token')
    check('wrong token: 401', s == 401, (s, b))
    s, b = c.api('/api/migrations', 'POST', {'user': 'alice', 'to': 'B'}, token=False)
    check('POST without token: 401, nothing started', s == 401 and c.api('/api/migrations')[1] == [], (s, b))
    s, b = c.api('/api/migrations', 'POST', raw=b'{"user": "alice",')
    check('malformed JSON: 400', s == 400 and 'JSON object' in b['error'], (s, b))
    s, b = c.api('/api/migrations', 'POST', raw=b'["alice", "B"]')
    check('JSON that is not an object: 400', s == 400, (s, b))
    s, b = c.api('/api/migrations', 'POST', {'user': 7, 'to': 'B'})
    check('user not a string: 400', s == 400 and '"user"' in b['error'], (s, b))
    s, b = c.api('/api/migrations', 'POST', {'user': 'alice'})
    check('no destination: 400', s == 400 and '"to"' in b['error'], (s, b))
    s, b = c.api('/api/migrations', 'POST', {'user': 'nobody', 'to': 'B'})
    check('unknown user: 404', s == 404 and 'unknown user' in b['error'], (s, b))
    s, b = c.api('/api/migrations', 'POST', {'user': 'alice', 'to': 'Z'})
    check('unknown engine: 404', s == 404 and 'unknown engine' in b['error'], (s, b))
    s, b = c.api('/api/migrations', 'POST', {'user': 'alice', 'to': 'A'})
    check('already there: 409', s == 409, (s, b))
    s, b = c.api('/api/migrations', 'POST', raw=b'{"user": "' + b'a' * 5000 + b'", "to": "B"}')
    check('oversize body: 413', s == 413 and '4096' in b['error'], (s, b))
    s, b = c.api('/api/migrations', 'POST', raw=b'')
    check('empty body: 400', s == 400, (s, b))
    s, b = c.api('/api/nothing')
    check('unknown API path: 404', s == 404, (s, b))
    s, b = c.api('/api/engines', 'DELETE')
    check('unknown method: 405', s == 405, (s, b))
    s, b = c.api('/secret.txt', token=False)
    check('only the dashboard files are served', s == 404, (s, b))
    s, b = c.api('/api/migrations')
    check('bad requests left no migration behind', s == 200 and b == [], b)
    check('alice still on A (migratectl)', c.engine_users('A').get('alice') == 'active')

    # ---------------------------------------------------------------- a migration
    s, b = c.api('/api/migrations', 'POST', {'user': 'alice', 'to': 'B'})
    check('POST a migration: 202', s == 202 and b['from'] == 'A' and b['to'] == 'B', (s, b))
    mid = b['id']
    m = c.wait_for('the migration to end', lambda: [x for x in c.api('/api/migrations')[1]
                                                     if x['id'] == mid and x['state'] not in ('requested', 'running')])[0]
    types = [e['type'] for e in m['events']]
    check('migration committed, with timings', m['state'] == 'committed' and len(m['mid']) == 32 and
          m['duration_us'] > 0 and m['downtime_us'] > 0 and m['ended_ms'] >= m['started_ms'] >= m['requested_ms'], m)
    check('its events recorded in order with phases: %s' % types,
          types[0] == 'started' and types[-1] == 'committed' and 'prepared' in types and
          all(e['phase'] for e in m['events']) and
          [e['bytes_sent'] for e in m['events']] == sorted(e['bytes_sent'] for e in m['events']), m['events'])
    check('alice is on B now (migratectl)', c.engine_users('B').get('alice') == 'active' and
          'alice' not in c.engine_users('A'))
    c.wait_for('registry to show alice on B',
               lambda: {'user': 'alice', 'engine': 'B', 'state': 'active'} in c.api('/api/users')[1])
    check('registry shows alice on B', True)
    s, b = c.api('/api/migrations', 'POST', {'user': 'alice', 'to': c.engine_url('A')})
    check('destination by URL: 202', s == 202, (s, b))
    c.wait_for('alice back on A', lambda: c.engine_users('A').get('alice') == 'active')
    check('alice back on A (migratectl)', True)

    # ---------------------------------------------------------------- cancel
    s, b = c.api('/api/migrations/99999/cancel', 'POST', raw=b'')
    check('cancel an unknown migration: 404', s == 404, (s, b))
    s, b = c.api('/api/migrations/%d/cancel' % mid, 'POST', raw=b'')
    check('cancel a finished migration: 409', s == 409 and 'not running' in b['error'], (s, b))
    s, b = c.api('/api/migrations/x1/cancel', 'POST', raw=b'')
    check('cancel with a malformed id: 404', s == 404, (s, b))
    s, b = c.api('/api/migrations/%d/cancel' % mid, 'POST', raw=b'{}')
    check('a cancel with a body: 400', s == 400 and 'no body' in b['error'], (s, b))
    s, b = c.api('/api/migrations/%d/cancel' % mid, 'POST', raw=b'', token=False)
    check('a cancel without the token: 401', s == 401, (s, b))
    # A migration stuck on a frozen destination: B stopped (its port still
    # accepts connections, nothing answers), alice asked to B before the
    # orchestrator sees B unhealthy. The source would wait for B's answer
    # for its peer timeout (5 s); the cancel ends it at once.
    c.signal_engine('B', signal.SIGSTOP)
    s, b = c.api('/api/migrations', 'POST', {'user': 'alice', 'to': 'B'})
    check('a migration to a frozen engine starts: 202', s == 202, (s, b))
    cid = b['id']
    # Running: the engine named it (STARTED) and waits for B's answer.
    c.wait_for('the migration running at A', lambda: [
        x for x in c.api('/api/migrations')[1]
        if x['id'] == cid and x['state'] == 'running' and x['mid']])
    t0 = time.monotonic()
    s, b = c.api('/api/migrations/%d/cancel' % cid, 'POST', raw=b'')
    check('cancel it: 202', s == 202 and b == {'id': cid, 'state': 'cancel requested'}, (s, b))
    # Again: the same answer while it runs, 409 once the cancel ended it
    # (the events below show one request either way).
    s, b = c.api('/api/migrations/%d/cancel' % cid, 'POST', raw=b'')
    check('cancel it again: 202 while it runs, or 409 once it ended',
          s == 202 or (s == 409 and 'not running' in b['error']), (s, b))
    m = c.wait_for('the canceled migration to end',
                   lambda: [x for x in c.api('/api/migrations')[1]
                            if x['id'] == cid and x['state'] not in ('requested', 'running')])[0]
    took = time.monotonic() - t0
    check('canceled: failed with MIG_ECANCELED %.0f ms after the request, not at the 5 s '
          'timeout' % (took * 1000),
          m['state'] == 'failed' and 'MIG_ECANCELED' in (m['error'] or '') and took < 4.0, m)
    types = [e['type'] for e in m['events']]
    check('the cancel request is among its events', types.count('cancel_requested') == 1, types)
    # Canceled at once, perhaps before the engine named it (or before the
    # orchestrator asked it): the same outcome.
    s, b = c.api('/api/migrations', 'POST', {'user': 'bob', 'to': 'B'})
    s2, b2 = c.api('/api/migrations/%d/cancel' % b['id'], 'POST', raw=b'')
    m = c.wait_for('the second canceled migration to end',
                   lambda: [x for x in c.api('/api/migrations')[1]
                            if x['id'] == b['id'] and x['state'] not in ('requested', 'running')])[0]
    check('canceled right after the request: failed with MIG_ECANCELED (%s)' % m['error'],
          s == 202 and s2 == 202 and m['state'] == 'failed' and
          'MIG_ECANCELED' in (m['error'] or ''), (s, s2, m))
    c.signal_engine('B', signal.SIGCONT)
    check('alice and bob still on A (migratectl)',
          c.engine_users('A').get('alice') == 'active' and
          c.engine_users('A').get('bob') == 'active')
    c.wait_for('B healthy again', lambda: c.health('B') == 'healthy')
    c.wait_for('B without alice and bob',
               lambda: not {'alice', 'bob'} & set(c.engine_users('B')))
    check('B never got them', True)

    # ---------------------------------------------------------------- health
    c.signal_engine('B', signal.SIGSTOP)  # link stays open, heartbeats stop
    t0 = time.monotonic()
    c.wait_for('B unhealthy', lambda: c.health('B') == 'unhealthy', timeout=5, step=0.02)
    took = time.monotonic() - t0
    # Unhealthy once no heartbeat came for 3 intervals: the last one came
    # at most one interval before the stop, and housekeeping runs every
    # 100 ms, so this takes between 2 and 3 intervals (+ 100 ms + polling).
    check('stalled engine unhealthy after 3 missed heartbeats (took %.0f ms)' % (took * 1000),
          2 * hb / 1000.0 - 0.05 <= took <= 3 * hb / 1000.0 + 0.25, took)
    s, b = c.api('/api/migrations', 'POST', {'user': 'bob', 'to': 'B'})
    check('no migration to an unhealthy engine: 409', s == 409 and 'unhealthy' in b['error'], (s, b))
    c.signal_engine('B', signal.SIGCONT)
    c.wait_for('B healthy again', lambda: c.health('B') == 'healthy')
    check('resumed engine healthy again', True)
    c.signal_engine('B', signal.SIGKILL)
    t0 = time.monotonic()
    c.wait_for('B unhealthy', lambda: c.health('B') == 'unhealthy', timeout=5, step=0.02)
    took = time.monotonic() - t0
    check('killed engine unhealthy within 3 heartbeats (took %.0f ms)' % (took * 1000),
          took < 3 * hb / 1000.0, took)

    # ---------------------------------------------------------------- orchestrator restart
    port = c.engines_url.rsplit(':', 1)[1]
    check('orchestrator exits 0 on SIGTERM', c.stop_orchestrator() == 0)
    time.sleep(1.0)  # A retries with backoff meanwhile
    c.start_orchestrator(engines_port=int(port))
    c.wait_for('A to announce again', lambda: c.health('A') == 'healthy', timeout=15)
    check('engine reconnects to a restarted orchestrator', True)
    s, b = c.api('/api/migrations')
    check('history survives the restart (SQLite)', s == 200 and
          [x['state'] for x in b] == ['failed', 'failed', 'committed', 'committed'], b)
    check('the killed engine is remembered as unhealthy', c.health('B') == 'unhealthy')
    check('orchestrator exits 0 on SIGTERM with engines connected', c.stop_orchestrator() == 0)

    # History is bounded: restarted keeping one migration, the older one
    # and its events are gone from the database, the newer one is whole.
    c.start_orchestrator(extra=['--keep-migrations', '1'])
    s, b = c.api('/api/migrations')
    with sqlite3.connect(os.path.join(c.dir, 'registry.db')) as db:
        rows = db.execute('SELECT id FROM migrations').fetchall()
        ev = db.execute('SELECT DISTINCT migration_id FROM migration_events').fetchall()
    check('--keep-migrations 1 keeps only the newest migration and its events',
          s == 200 and len(b) == 1 and b[0]['events'] and rows == [(b[0]['id'],)] and
          ev == [(b[0]['id'],)], (b, rows, ev))
    c.stop_orchestrator()

    # An engine option that does not parse fails at start.
    r = subprocess.run([c.args.server, '--id', 'bad', '--secret-file', c.secret,
                        '--orchestrator', 'http://nowhere'], capture_output=True, timeout=10)
    check('a bad orchestrator URL is refused at engine start', r.returncode != 0 and
          b'invalid argument' in r.stderr, r.stderr)


def run_tls(c, certs):
    """Both orchestrator ports over TLS: engines announce to wss://, the API
    and dashboard are https://, the orchestrator reaches wss:// engines
    with the CA it was given; nothing answers in clear, and an engine that
    cannot verify the orchestrator never registers."""
    def pem(name):
        return os.path.join(certs, name)
    tls = ['--tls-cert', pem('server.pem'), '--tls-key', pem('server.key'),
           '--tls-ca', pem('ca.pem')]
    r = subprocess.run([c.args.orchestrator, '--secret-file', c.secret, '--token-file',
                        c.token_file, '--engines-port', '0', '--http-port', '0', '--db',
                        ':memory:', '--static', c.args.web, '--tls-cert', pem('server.pem')],
                       capture_output=True, timeout=10)
    check('TLS: --tls-cert without --tls-key is a usage error', r.returncode == 2 and
          b'go together' in r.stderr, (r.returncode, r.stderr))
    r = subprocess.run([c.args.orchestrator, '--secret-file', c.secret, '--token-file',
                        c.token_file, '--engines-port', '0', '--http-port', '0', '--db',
                        ':memory:', '--static', c.args.web, '--tls-cert', pem('server.pem'),
                        '--tls-key', pem('ca.key')], capture_output=True, timeout=10)
    check('TLS: a key that does not match the certificate fails at start, saying so',
          r.returncode == 1 and b'TLS key' in r.stderr and b'mismatch' in r.stderr,
          (r.returncode, r.stderr))

    c.start_orchestrator(extra=tls)
    check('TLS: the orchestrator prints wss:// and https://',
          c.engines_url.startswith('wss://') and c.http_url.startswith('https://'),
          (c.engines_url, c.http_url))
    c.ssl_context = ssl.create_default_context(cafile=pem('ca.pem'))
    hb = 300
    for name, users in (('TA', ['carol']), ('TB', [])):
        c.start_engine(name, users=users, heartbeat_ms=hb, extra=tls)
    # Trusts another CA only: cannot verify the orchestrator, never gets in.
    c.start_engine('TX', users=['mallory'], heartbeat_ms=hb,
                   extra=['--tls-ca', pem('rogue-ca.pem')])
    c.wait_for('both TLS engines healthy over https',
               lambda: c.health('TA') == 'healthy' and c.health('TB') == 'healthy')
    check('TLS: engines announce over wss:// and the API answers over https://', True)
    # carol is listed: the orchestrator asked TA for its users over wss://.
    c.wait_for('carol listed', lambda: {'user': 'carol', 'engine': 'TA', 'state': 'active'}
               in c.api('/api/users')[1])
    check('TLS: the orchestrator polls wss:// engines with --tls-ca', True)
    s, b = c.api('/api/migrations', 'POST', {'user': 'carol', 'to': 'TB'})
    check('TLS: POST /api/migrations over https: 202', s == 202, (s, b))
    m = c.wait_for('the TLS migration to end', lambda: [x for x in c.api('/api/migrations')[1]
                                                        if x['state'] in ('committed', 'aborted')])
    check('TLS: the migration commits', m[0]['state'] == 'committed', m)
    c.wait_for('carol on TB', lambda: {'user': 'carol', 'engine': 'TB', 'state': 'active'}
               in c.api('/api/users')[1])
    names = [e['id'] for e in c.api('/api/engines')[1]]
    check('TLS: an engine that cannot verify the orchestrator is not registered',
          'TX' not in names and all(u['user'] != 'mallory' for u in c.api('/api/users')[1]),
          names)
    with open(os.path.join(c.dir, 'engine-TX.log'), 'rb') as f:
        log = f.read()
    check('TLS: that engine says why', b'orchestrator' in log and
          any(w in log.lower() for w in (b'certificate', b'verify', b'tls', b'ssl')), log[-400:])
    # The dashboard's WebSocket over wss://: the upgrade is accepted and the
    # first message (the registry, as JSON) arrives.
    host, port = c.http_url[len('https://'):].rsplit(':', 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with c.ssl_context.wrap_socket(raw, server_hostname=host) as t:
            t.sendall(('GET /ws?token=%s HTTP/1.1\r\nHost: %s:%s\r\nUpgrade: websocket\r\n'
                       'Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n'
                       'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mig-dashboard\r\n'
                       '\r\n' % (c.token, host, port)).encode())
            got = b''
            while b'\r\n\r\n' not in got or b'TA' not in got:
                chunk = t.recv(65536)
                if not chunk:
                    break
                got += chunk
    check('TLS: the dashboard WebSocket upgrades over wss:// and pushes the registry',
          got.startswith(b'HTTP/1.1 101') and b'TA' in got, got[:200])
    # Nothing in clear: plain HTTP to the https port gets no API answer.
    plain = 'http://' + c.http_url[len('https://'):]
    req = urllib.request.Request(plain + '/api/engines')
    req.add_header('Authorization', 'Bearer ' + c.token)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            answered = r.status == 200
    except (urllib.error.URLError, ConnectionError, OSError, http.client.HTTPException):
        answered = False
    check('TLS: plain http:// to the https port gets no API answer', not answered)
    # Under the sanitizers a leak at exit makes this non-zero.
    check('TLS: orchestrator exits 0 on SIGTERM', c.stop_orchestrator() == 0)


if __name__ == '__main__':
    sys.exit(main())

"""Start and stop a real cluster for the orchestrator's tests: the
migrate-orchestrator and counter_server engines that announce themselves to
it, each a process on loopback with ephemeral ports. Standard library only.
"""
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request


class Cluster:
    def __init__(self, args, workdir, name):
        self.args = args
        self.dir = os.path.join(workdir, name)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.secret = os.path.join(self.dir, 'secret')
        with open(self.secret, 'w') as f:
            f.write(secrets.token_hex(32) + '\n')
        self.token = 'op-' + secrets.token_hex(16)
        self.token_file = os.path.join(self.dir, 'token')
        with open(self.token_file, 'w') as f:
            f.write(self.token + '\n')
        self.procs = {}
        self.orch = None
        self.engines_url = None
        self.http_url = None
        self.ssl_context = None  # for https:// API calls (set with a CA)

    # -------------------------------------------------------------- processes

    def _read_lines(self, proc, prefixes, timeout=10):
        """Reads stdout lines until one line per prefix was seen."""
        found = {}
        deadline = time.monotonic() + timeout
        buf = b''
        while len(found) < len(prefixes):
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise RuntimeError('process did not print %s (exit %s)' % (prefixes, proc.poll()))
            r, _, _ = select.select([proc.stdout], [], [], left)
            if not r:
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                continue
            buf += chunk
            while b'\n' in buf:
                line, buf = buf.split(b'\n', 1)
                words = line.decode().split()
                if len(words) >= 2 and words[0] in prefixes:
                    found[words[0]] = words[1]
        return found

    def start_orchestrator(self, engines_port=0, extra=()):
        log = open(os.path.join(self.dir, 'orchestrator.log'), 'ab')
        cmd = [self.args.orchestrator, '--secret-file', self.secret,
               '--token-file', self.token_file, '--engines-port', str(engines_port),
               '--http-port', '0', '--db', os.path.join(self.dir, 'registry.db'),
               '--static', self.args.web, '--poll-ms', '300'] + list(extra)
        self.orch = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
        found = self._read_lines(self.orch, ['engines', 'http'])
        self.engines_url = found['engines']
        self.http_url = found['http']
        return self.orch

    def stop_orchestrator(self, sig=signal.SIGTERM):
        if self.orch and self.orch.poll() is None:
            self.orch.send_signal(sig)
            rc = self.orch.wait(timeout=10)
            self.orch.stdout.close()
            self.orch = None
            return rc
        return None

    def start_engine(self, name, users=(), heartbeat_ms=500, secret=None, orchestrator=None,
                     extra=()):
        cmd = [self.args.server, '--id', name, '--secret-file', secret or self.secret,
               '--orchestrator', orchestrator or self.engines_url,
               '--heartbeat-ms', str(heartbeat_ms)] + list(extra)
        if users:
            cmd += ['--users', ','.join(users)]
        # stdout goes to a file: the server prints a line per event and
        # must never block on a full pipe.
        out = os.path.join(self.dir, 'engine-%s.out' % name)
        with open(out, 'wb') as o, open(os.path.join(self.dir, 'engine-%s.log' % name), 'ab') as e:
            p = subprocess.Popen(cmd, stdout=o, stderr=e)

        def url():
            if p.poll() is not None:
                raise RuntimeError('engine %s exited with %s' % (name, p.returncode))
            with open(out) as f:
                for line in f:
                    if line.startswith('url '):
                        return line.split()[1]
            return None
        u = self.wait_for('engine %s to start' % name, url)
        self.procs[name] = (p, u)
        return u

    def engine_url(self, name):
        return self.procs[name][1]

    def signal_engine(self, name, sig):
        self.procs[name][0].send_signal(sig)

    def close(self):
        for p, _ in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
            p.wait(timeout=10)
        self.procs = {}
        self.stop_orchestrator()

    # -------------------------------------------------------------- checks

    def engine_users(self, name):
        """The engine's users, asked with migratectl over its control channel."""
        out = subprocess.run([self.args.migratectl, '--engine', self.engine_url(name),
                              '--secret-file', self.secret, 'users'],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        return dict(line.split('\t')[:2] for line in out.splitlines() if '\t' in line)

    def api(self, path, method='GET', body=None, token=True, raw=None, headers=None):
        """(status, parsed JSON or None) of an API call."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.http_url + path, data=data, method=method)
        if token:
            req.add_header('Authorization', 'Bearer ' + (token if isinstance(token, str) else self.token))
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=10, context=self.ssl_context) as r:
                return r.status, json.loads(r.read() or b'null')
        except urllib.error.HTTPError as e:
            text = e.read()
            try:
                return e.code, json.loads(text)
            except ValueError:
                return e.code, text

    def wait_for(self, what, fn, timeout=10, step=0.05):
        deadline = time.monotonic() + timeout
        while True:
            v = fn()
            if v:
                return v
            if time.monotonic() > deadline:
                raise AssertionError('timed out waiting for ' + what)
            time.sleep(step)

    def health(self, name):
        _, engines = self.api('/api/engines')
        for e in engines:
            if e['id'] == name:
                return e['health']
        return None

"""The dashboard in a real browser: the orchestrator and two counter_server
engines (real app servers announcing themselves), headless Chromium driven
by Selenium through chromedriver. Opens the dashboard, waits for both
engines and the user, moves the user by clicking, sees it under the other
engine (and checks with migratectl that the engine really holds it), saves a
screenshot, cancels a migration stuck on a frozen engine with its cancel
button, then SIGKILLs an engine and checks the dashboard marks it unhealthy
within 3 heartbeats.

Exits 77 (meson: skipped) with the reason when Chromium, chromedriver or
Selenium is missing.
"""
import argparse
import os
import shutil
import signal
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster  # noqa: E402

CHROMIUM = '/usr/bin/chromium'
CHROMEDRIVER = '/usr/bin/chromedriver'
HEARTBEAT_MS = 500


def skip(reason):
    print('SKIP: ' + reason, flush=True)
    sys.exit(77)


def main():
    ap = argparse.ArgumentParser()
    for a in ('orchestrator', 'server', 'migratectl', 'web', 'workdir'):
        ap.add_argument('--' + a, required=True)
    args = ap.parse_args()
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            skip('%s is not installed (Debian packages chromium, chromium-driver)' % path)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
        from selenium.common.exceptions import WebDriverException, StaleElementReferenceException
    except ImportError as e:
        skip('selenium is not importable by %s: %s (Debian package python3-selenium)' %
             (sys.executable, e))

    c = Cluster(args, args.workdir, 'browser-test')
    driver = None
    t_start = time.monotonic()
    try:
        c.start_orchestrator()
        c.start_engine('edge-1', users=['alice'], heartbeat_ms=HEARTBEAT_MS)
        c.start_engine('edge-2', heartbeat_ms=HEARTBEAT_MS)

        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for a in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                  '--window-size=1280,860', '--user-data-dir=' + os.path.join(c.dir, 'profile')):
            opts.add_argument(a)
        try:
            driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        except WebDriverException as e:
            skip('Chromium cannot start here: %s' % str(e).splitlines()[0])
        wait = WebDriverWait(driver, 15, poll_frequency=0.05,
                             ignored_exceptions=[StaleElementReferenceException])

        def css(sel):
            return driver.find_elements(By.CSS_SELECTOR, sel)

        driver.get('%s/#token=%s' % (c.http_url, c.token))
        wait.until(lambda d: css('#link.up'), 'the dashboard WebSocket to connect')
        wait.until(lambda d: css('[data-engine="edge-1"][data-health="healthy"]') and
                   css('[data-engine="edge-2"][data-health="healthy"]'),
                   'both engines healthy on the dashboard')
        wait.until(lambda d: css('#engine-edge-1 li[data-user="alice"]'),
                   'alice under edge-1 on the dashboard')
        print('dashboard shows both engines and alice on edge-1', flush=True)
        assert c.engine_users('edge-1').get('alice') == 'active'

        # Buttons are re-rendered on every push: look one up again if it
        # went stale between finding and clicking.
        def click(sel):
            def go(d):
                try:
                    b = css(sel)
                    if not b:
                        return False
                    b[0].click()
                    return True
                except StaleElementReferenceException:
                    return False
            return go

        # Move alice by clicking her button.
        wait.until(click('#engine-edge-1 button.move[data-user="alice"][data-to="edge-2"]'),
                   'the move button')
        t_click = time.monotonic()
        wait.until(lambda d: css('#engine-edge-2 li[data-user="alice"]') and
                   'active' in css('#engine-edge-2 li[data-user="alice"]')[0].text and
                   not css('#engine-edge-1 li[data-user="alice"]'),
                   'alice under edge-2 on the dashboard')
        t_seen = time.monotonic()
        # The table is re-rendered on every push: read the row's text in
        # the same try that finds it (a stale element is tried again).
        def text_of(sel):
            found = css(sel)
            return found[0].text if found else False
        row = wait.until(lambda d: text_of('#migrations tr.committed'),
                         'the migration row committed')
        print('migration row: %s' % row, flush=True)
        print('click -> alice shown under edge-2: %.0f ms' % ((t_seen - t_click) * 1000), flush=True)
        # The page is not the proof: ask both engines over their control channels.
        users2, users1 = c.engine_users('edge-2'), c.engine_users('edge-1')
        assert users2.get('alice') == 'active', users2
        assert 'alice' not in users1, users1
        print('migratectl: alice active on edge-2, absent from edge-1', flush=True)
        result = wait.until(lambda d: text_of('#move-result'), 'the move result')
        assert 'migration #' in result, result

        shot = os.path.join(args.workdir, 'dashboard.png')
        driver.save_screenshot(shot)
        print('screenshot: %s' % shot, flush=True)

        # Cancel from the page: edge-1 frozen (its port still accepts, it
        # answers nothing), alice sent back to it before the orchestrator
        # sees it unhealthy; the source would wait 5 s for an answer, the
        # cancel button ends the migration at once and alice stays.
        c.signal_engine('edge-1', signal.SIGSTOP)
        wait.until(click('#engine-edge-2 button.move[data-user="alice"][data-to="edge-1"]'),
                   'the move-back button')
        wait.until(click('#migrations tr.running button.cancel, '
                         '#migrations tr.requested button.cancel'), 'a cancel button')
        t_cancel = time.monotonic()
        row = wait.until(lambda d: text_of('#migrations tr.failed'), 'the migration row failed')
        took = time.monotonic() - t_cancel
        c.signal_engine('edge-1', signal.SIGCONT)
        print('cancel clicked -> row failed: %.0f ms: %s' % (took * 1000, row), flush=True)
        assert 'MIG_ECANCELED' in row, row
        assert took < 4.0, took
        assert c.engine_users('edge-2').get('alice') == 'active'
        wait.until(lambda d: css('[data-engine="edge-1"][data-health="healthy"]'),
                   'edge-1 healthy again')

        # Done-when 2: SIGKILL an engine; the dashboard must mark it
        # unhealthy within 3 heartbeats.
        c.signal_engine('edge-1', signal.SIGKILL)
        t_kill = time.monotonic()
        WebDriverWait(driver, 3 * HEARTBEAT_MS / 1000.0, poll_frequency=0.02).until(
            lambda d: css('[data-engine="edge-1"][data-health="unhealthy"]'),
            'edge-1 unhealthy on the dashboard within 3 heartbeats')
        took = time.monotonic() - t_kill
        print('SIGKILL -> edge-1 unhealthy on the dashboard: %.0f ms (limit %d ms)' %
              (took * 1000, 3 * HEARTBEAT_MS), flush=True)
        assert took < 3 * HEARTBEAT_MS / 1000.0
        assert css('[data-engine="edge-2"][data-health="healthy"]')
        driver.save_screenshot(os.path.join(args.workdir, 'dashboard-unhealthy.png'))
        driver.quit()
        driver = None
        rc = c.stop_orchestrator()
        assert rc == 0, 'orchestrator exited %s on SIGTERM' % rc
        print('total %.1f s' % (time.monotonic() - t_start), flush=True)
        return 0
    finally:
        if driver:
            driver.quit()
        c.close()
        shutil.rmtree(os.path.join(c.dir, 'profile'), ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())

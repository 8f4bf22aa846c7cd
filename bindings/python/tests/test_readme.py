"""README.md's examples run as written: every ```python block of
bindings/python/README.md is run in a fresh interpreter. The first must move
alice from A to B; the second (under "## Failover") must replicate alice
from A to B, lose A and promote her at B with the replicated bytes."""

import os
import re
import subprocess
import sys
import unittest

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")


def blocks():
    with open(README) as f:
        return re.findall(r"^```python\n(.*?)^```$", f.read(), re.S | re.M)


def run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30)


class ReadmeTest(unittest.TestCase):
    def test_every_python_block_is_tested(self):
        self.assertEqual(len(blocks()), 2, "a new ```python block in README.md needs a test here")

    def test_example_runs(self):
        found = blocks()
        self.assertTrue(found, "no ```python block in README.md")
        code = found[0]
        self.assertLessEqual(len(code.splitlines()), 30, "the example should stay short")
        done = run(code)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertRegex(done.stdout,
                         r"^alice moved to ws://127\.0\.0\.1:\d+: \d+ bytes, \d+ us paused; "
                         r"B holds b'step 3 of 6'\n$")

    def test_failover_example_runs(self):
        found = blocks()
        self.assertGreaterEqual(len(found), 2, "no failover ```python block in README.md")
        code = found[1]
        self.assertIn("standby.promote(", code)
        self.assertLessEqual(len(code.splitlines()), 35, "the example should stay short")
        done = run(code)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertRegex(done.stdout,
                         r"^B promoted alice at epoch 2 from update [1-9]\d*: "
                         r"b'step 3 of 6'\n$")


if __name__ == "__main__":
    unittest.main()

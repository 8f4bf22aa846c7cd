"""README.md's example runs as written: the first ```python block of
bindings/python/README.md is run in a fresh interpreter and must move alice
from A to B."""

import os
import re
import subprocess
import sys
import unittest

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")


class ReadmeTest(unittest.TestCase):
    def test_example_runs(self):
        with open(README) as f:
            blocks = re.findall(r"^```python\n(.*?)^```$", f.read(), re.S | re.M)
        self.assertTrue(blocks, "no ```python block in README.md")
        code = blocks[0]
        self.assertLessEqual(len(code.splitlines()), 30, "the example should stay short")
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=30)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertRegex(run.stdout,
                         r"^alice moved to ws://127\.0\.0\.1:\d+: \d+ bytes, \d+ us paused; "
                         r"B holds b'step 3 of 6'\n$")


if __name__ == "__main__":
    unittest.main()

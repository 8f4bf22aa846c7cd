"""The ctypes structures of the binding match the C headers: every field the
C program tests/layout.c prints (compiled against the installed headers of
this build) has the same offset in the ctypes structure, the structure has
the same size, and no C field is missing from the binding."""

import os
import subprocess
import unittest

from migrate import _lib

STRUCTS = {
    "mig_event": _lib.Event,
    "mig_engine_options": _lib.EngineOptions,
    "mig_hooks": _lib.Hooks,
    "mig_light_domain": _lib.LightDomain,
    "mig_file_domain": _lib.FileDomain,
    "mig_migration_stats": _lib.MigrationStats,
    "mig_client_redirect": _lib.ClientRedirect,
    "mig_client_options": _lib.ClientOptions,
    "mig_ctl_options": _lib.CtlOptions,
    "mig_ctl_migration": _lib.CtlMigration,
    "mig_ctl_engine_status": _lib.CtlEngineStatus,
}


class LayoutTest(unittest.TestCase):
    def test_offsets_and_sizes_match_the_headers(self):
        exe = os.environ.get("MIGRATE_LAYOUT")
        if not exe:
            self.fail("MIGRATE_LAYOUT is not set (run through meson test)")
        out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
        seen = {name: set() for name in STRUCTS}
        for line in out.splitlines():
            struct, field, value = line.split()
            cls = STRUCTS[struct]
            if field == "-":
                self.assertEqual(__import__("ctypes").sizeof(cls), int(value), struct)
                continue
            self.assertTrue(hasattr(cls, field), f"{struct}.{field} is not in the binding")
            self.assertEqual(getattr(cls, field).offset, int(value), f"{struct}.{field}")
            seen[struct].add(field)
        for struct, cls in STRUCTS.items():
            mirrored = {f[0] for f in cls._fields_}
            self.assertEqual(mirrored, seen[struct], f"{struct}: fields differ")


if __name__ == "__main__":
    unittest.main()

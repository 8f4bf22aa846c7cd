"""The ctypes structures of the binding match the C headers: every field the
C program tests/layout.c prints (compiled against the installed headers of
this build) has the same offset and size in the ctypes structure, the
structure has the same size, and no C field is missing from the binding.
The mirrored enums have the C values, member for member."""

import ctypes
import os
import subprocess
import unittest

import migrate
from migrate import _lib

STRUCTS = {
    "mig_event": _lib.Event,
    "mig_engine_options": _lib.EngineOptions,
    "mig_hooks": _lib.Hooks,
    "mig_light_domain": _lib.LightDomain,
    "mig_file_domain": _lib.FileDomain,
    "mig_migration_stats": _lib.MigrationStats,
    "mig_replicate_options": _lib.ReplicateOptions,
    "mig_replica_event": _lib.ReplicaEvent,
    "mig_replica_info": _lib.ReplicaInfo,
    "mig_client_redirect": _lib.ClientRedirect,
    "mig_client_options": _lib.ClientOptions,
    "mig_ctl_options": _lib.CtlOptions,
    "mig_ctl_migration": _lib.CtlMigration,
    "mig_ctl_engine_status": _lib.CtlEngineStatus,
}

# enum -> (Python enum, prefix of the C names)
ENUMS = {
    "mig_replica_event_type": (migrate.ReplicaEventType, "MIG_REPLICA_"),
}


class LayoutTest(unittest.TestCase):
    def test_offsets_and_sizes_match_the_headers(self):
        exe = os.environ.get("MIGRATE_LAYOUT")
        if not exe:
            self.fail("MIGRATE_LAYOUT is not set (run through meson test)")
        out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
        seen = {name: set() for name in STRUCTS}
        enum_seen = {name: {} for name in ENUMS}
        for line in out.splitlines():
            struct, field, value, *size = line.split()
            if struct in ENUMS:
                enum_seen[struct][field] = int(value)
                continue
            cls = STRUCTS[struct]
            if field == "-":
                self.assertEqual(ctypes.sizeof(cls), int(value), struct)
                continue
            self.assertTrue(hasattr(cls, field), f"{struct}.{field} is not in the binding")
            self.assertEqual(getattr(cls, field).offset, int(value), f"{struct}.{field}")
            self.assertEqual(getattr(cls, field).size, int(size[0]), f"{struct}.{field} size")
            seen[struct].add(field)
        for struct, cls in STRUCTS.items():
            mirrored = {f[0] for f in cls._fields_}
            self.assertEqual(mirrored, seen[struct], f"{struct}: fields differ")
        for name, (py_enum, prefix) in ENUMS.items():
            mirrored = {prefix + m.name: m.value for m in py_enum}
            self.assertEqual(mirrored, enum_seen[name], f"{name}: values differ")


if __name__ == "__main__":
    unittest.main()

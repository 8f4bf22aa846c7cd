/* Prints the size and field offsets of every structure the Python binding
 * mirrors with ctypes (bindings/python/migrate/_lib.py), as
 * "struct field offset size" lines and "struct - size" lines, and the values of
 * the enums it mirrors as "enum NAME value" lines, compiled against
 * the public headers: test_layout.py compares them with the ctypes
 * structures, so a header change the binding misses fails the build's tests. */
#include <stddef.h>
#include <stdio.h>

#include <migrate/client.h>
#include <migrate/control.h>
#include <migrate/migrate.h>
#include <migrate/replicate.h>

#define SIZE(T) printf("%s - %zu\n", #T, sizeof(T))
#define OFF(T, f) printf("%s %s %zu %zu\n", #T, #f, offsetof(T, f), sizeof(((T *)0)->f))
#define ENUM(T, v) printf("%s %s %d\n", #T, #v, (int)(v))

int main(void)
{
	SIZE(mig_event);
	OFF(mig_event, type);
	OFF(mig_event, mid);
	OFF(mig_event, user);
	OFF(mig_event, peer_url);
	OFF(mig_event, error);
	OFF(mig_event, reason);
	OFF(mig_event, bytes_sent);
	OFF(mig_event, bytes_received);
	OFF(mig_event, duration_us);
	OFF(mig_event, downtime_us);
	OFF(mig_event, rounds);
	OFF(mig_event, phase);
	OFF(mig_event, time_us);

	SIZE(mig_engine_options);
	OFF(mig_engine_options, listen_address);
	OFF(mig_engine_options, listen_port);
	OFF(mig_engine_options, advertised_url);
	OFF(mig_engine_options, engine_id);
	OFF(mig_engine_options, secret);
	OFF(mig_engine_options, secret_len);
	OFF(mig_engine_options, allow_insecure);
	OFF(mig_engine_options, tls_cert_file);
	OFF(mig_engine_options, tls_key_file);
	OFF(mig_engine_options, tls_ca_file);
	OFF(mig_engine_options, tls_require_client_cert);
	OFF(mig_engine_options, max_frame_bytes);
	OFF(mig_engine_options, peer_timeout_ms);
	OFF(mig_engine_options, on_event);
	OFF(mig_engine_options, on_log);
	OFF(mig_engine_options, log_level);
	OFF(mig_engine_options, user_data);
	OFF(mig_engine_options, precopy_alpha_ms);
	OFF(mig_engine_options, precopy_max_rounds);
	OFF(mig_engine_options, precopy_rate_limit);
	OFF(mig_engine_options, compression);
	OFF(mig_engine_options, file_cache_bytes);
	OFF(mig_engine_options, file_cache_off);
	OFF(mig_engine_options, worker_threads);
	OFF(mig_engine_options, worker_nice);
	OFF(mig_engine_options, metrics_off);
	OFF(mig_engine_options, orchestrator_url);
	OFF(mig_engine_options, heartbeat_ms);
	OFF(mig_engine_options, app_url);
	OFF(mig_engine_options, session_token_ttl_s);

	SIZE(mig_hooks);
	OFF(mig_hooks, pause);
	OFF(mig_hooks, resume);
	OFF(mig_hooks, release);
	OFF(mig_hooks, incoming);
	OFF(mig_hooks, activate);
	OFF(mig_hooks, drop);

	SIZE(mig_light_domain);
	OFF(mig_light_domain, name);
	OFF(mig_light_domain, type_name);
	OFF(mig_light_domain, version);
	OFF(mig_light_domain, extract);
	OFF(mig_light_domain, merge);

	SIZE(mig_file_domain);
	OFF(mig_file_domain, name);
	OFF(mig_file_domain, version);
	OFF(mig_file_domain, root);
	OFF(mig_file_domain, append_only);

	SIZE(mig_migration_stats);
	OFF(mig_migration_stats, state);
	OFF(mig_migration_stats, error);
	OFF(mig_migration_stats, bytes_sent);
	OFF(mig_migration_stats, bytes_received);
	OFF(mig_migration_stats, duration_us);
	OFF(mig_migration_stats, downtime_us);
	OFF(mig_migration_stats, rounds);
	OFF(mig_migration_stats, round_bytes);

	SIZE(mig_replicate_options);
	OFF(mig_replicate_options, interval_ms);

	SIZE(mig_replica_event);
	OFF(mig_replica_event, type);
	OFF(mig_replica_event, user);
	OFF(mig_replica_event, peer_url);
	OFF(mig_replica_event, epoch);
	OFF(mig_replica_event, seq);
	OFF(mig_replica_event, bytes);
	OFF(mig_replica_event, total_bytes);
	OFF(mig_replica_event, lag_us);
	OFF(mig_replica_event, error);
	OFF(mig_replica_event, reason);
	OFF(mig_replica_event, time_us);

	SIZE(mig_replica_info);
	OFF(mig_replica_info, primary);
	OFF(mig_replica_info, standby);
	OFF(mig_replica_info, epoch);
	OFF(mig_replica_info, seq);
	OFF(mig_replica_info, acked_seq);
	OFF(mig_replica_info, updates);
	OFF(mig_replica_info, bytes);
	OFF(mig_replica_info, last_us);

	ENUM(mig_replica_event_type, MIG_REPLICA_ACKED);
	ENUM(mig_replica_event_type, MIG_REPLICA_REFUSED);
	ENUM(mig_replica_event_type, MIG_REPLICA_SUPERSEDED);
	ENUM(mig_replica_event_type, MIG_REPLICA_STOPPED);
	ENUM(mig_replica_event_type, MIG_REPLICA_INSTALLED);
	ENUM(mig_replica_event_type, MIG_REPLICA_REJECTED);
	ENUM(mig_replica_event_type, MIG_REPLICA_PROMOTED);
	ENUM(mig_replica_event_type, MIG_REPLICA_PROMOTE_FAILED);

	SIZE(mig_client_redirect);
	OFF(mig_client_redirect, user);
	OFF(mig_client_redirect, app_url);
	OFF(mig_client_redirect, session_url);
	OFF(mig_client_redirect, engine_id);

	SIZE(mig_client_options);
	OFF(mig_client_options, url);
	OFF(mig_client_options, token);
	OFF(mig_client_options, user);
	OFF(mig_client_options, fallback_urls);
	OFF(mig_client_options, fallback_count);
	OFF(mig_client_options, backoff_initial_ms);
	OFF(mig_client_options, backoff_max_ms);
	OFF(mig_client_options, jitter_percent);
	OFF(mig_client_options, max_attempts);
	OFF(mig_client_options, connect_timeout_ms);
	OFF(mig_client_options, tls_ca_file);
	OFF(mig_client_options, tls_cert_file);
	OFF(mig_client_options, tls_key_file);
	OFF(mig_client_options, on_state);
	OFF(mig_client_options, on_redirect);
	OFF(mig_client_options, user_data);

	SIZE(mig_ctl_options);
	OFF(mig_ctl_options, url);
	OFF(mig_ctl_options, secret);
	OFF(mig_ctl_options, secret_len);
	OFF(mig_ctl_options, allow_insecure);
	OFF(mig_ctl_options, tls_ca_file);
	OFF(mig_ctl_options, tls_cert_file);
	OFF(mig_ctl_options, tls_key_file);
	OFF(mig_ctl_options, timeout_ms);

	SIZE(mig_ctl_migration);
	OFF(mig_ctl_migration, mid);
	OFF(mig_ctl_migration, user);
	OFF(mig_ctl_migration, peer_url);
	OFF(mig_ctl_migration, outgoing);
	OFF(mig_ctl_migration, phase);
	OFF(mig_ctl_migration, rounds);
	OFF(mig_ctl_migration, bytes_sent);
	OFF(mig_ctl_migration, bytes_received);
	OFF(mig_ctl_migration, started_us);
	OFF(mig_ctl_migration, duration_us);
	OFF(mig_ctl_migration, parked);

	SIZE(mig_ctl_engine_status);
	OFF(mig_ctl_engine_status, engine_id);
	OFF(mig_ctl_engine_status, url);
	OFF(mig_ctl_engine_status, protocol_version);
	OFF(mig_ctl_engine_status, library_version);
	OFF(mig_ctl_engine_status, users_by_state);
	OFF(mig_ctl_engine_status, users);
	OFF(mig_ctl_engine_status, migrations);
	OFF(mig_ctl_engine_status, nmigrations);
	OFF(mig_ctl_engine_status, committed_out);
	OFF(mig_ctl_engine_status, aborted_out);
	OFF(mig_ctl_engine_status, committed_in);
	OFF(mig_ctl_engine_status, aborted_in);
	OFF(mig_ctl_engine_status, bytes_sent);
	OFF(mig_ctl_engine_status, bytes_received);
	OFF(mig_ctl_engine_status, uptime_us);
	return 0;
}

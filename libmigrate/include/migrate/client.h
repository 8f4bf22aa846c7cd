/*
 * libmigrate reconnect helper, for the clients of a server that links
 * libmigrate: it keeps a client attached to whichever engine serves its user,
 * and tells the app where its own data connection must go after the user
 * migrates.
 *
 * The server app mints a session token for its client with
 * mig_session_token() and hands it over in its own protocol, together with
 * the engine's session URL (mig_engine_url()). The helper attaches with it to
 * the engine's session channel (WebSocket subprotocol "mig-session"; no
 * cluster secret: the token is the credential). When the user migrates, the
 * engine that served it sends a redirect: the helper calls the app back with
 * the new app URL and attaches at the destination on its own. It reconnects
 * with exponential backoff and jitter, tries a fallback list of URLs, and
 * reports every state change. No app data passes through it.
 *
 * Threading: like the engine, the helper owns an I/O thread, and its
 * callbacks run only inside mig_client_dispatch(), on the thread that calls
 * it. Put mig_client_fd() in your poll loop and call mig_client_dispatch()
 * when it is readable. Call the mig_client_* functions from one thread at a
 * time (the one that dispatches); mig_client_fd() and mig_client_get_state()
 * may be called from any thread.
 */
#ifndef MIGRATE_CLIENT_H
#define MIGRATE_CLIENT_H

#include <migrate/migrate.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A reconnect helper: one client of one user. */
typedef struct mig_client mig_client;

/** What the helper is doing. */
typedef enum mig_client_state {
	/** Not connected: the link dropped (a reconnect follows) or not started. */
	MIG_CLIENT_DISCONNECTED = 0,
	/** Connecting and attaching; the detail is the URL. */
	MIG_CLIENT_CONNECTING = 1,
	/** Attached; the detail is "ENGINE_ID URL". */
	MIG_CLIENT_ATTACHED = 2,
	/** The user migrated: the engine said where to go (attaching follows). */
	MIG_CLIENT_REDIRECTED = 3,
	/** Waiting before the next attempt; the detail says how long and why. */
	MIG_CLIENT_BACKING_OFF = 4,
	/** Stopped: the token was refused (the detail is the engine's reason)
	 *  or max_attempts ran out. mig_client_attach() starts over. */
	MIG_CLIENT_FAILED = 5,
} mig_client_state;

/** Where the user went; valid only during the on_redirect call. */
typedef struct mig_client_redirect {
	const char *user;
	/** Where the app's own data connection must go now ("" if the
	 *  destination engine advertises none). */
	const char *app_url;
	/** The destination engine's session URL (the helper attaches there). */
	const char *session_url;
	/** The destination engine's id. */
	const char *engine_id;
} mig_client_redirect;

/**
 * State callback: every change, in order. `error` is 0 or a MIG_E* value
 * (FAILED: why; e.g. MIG_EEXIST for "token already used"); `detail` is a
 * one-line text, valid only during the call.
 * Thread: only inside mig_client_dispatch(). Callback-safe: any mig_client_*
 * call except mig_client_free() and mig_client_dispatch().
 */
typedef void (*mig_client_state_fn)(mig_client *client, mig_client_state state, int error,
				    const char *detail, void *user_data);

/**
 * Redirect callback: the user now lives at another engine; move the app's
 * data connection to redirect->app_url. The helper is already attaching at
 * the destination (state REDIRECTED, then CONNECTING, ATTACHED follow).
 * Thread and callback-safety: as mig_client_state_fn.
 */
typedef void (*mig_client_redirect_fn)(mig_client *client, const mig_client_redirect *redirect,
				       void *user_data);

/** Helper options; zero-initialise. Strings are copied. */
typedef struct mig_client_options {
	/** The engine's session URL, "ws://host:port" or "wss://host:port". */
	const char *url;
	/** A session token from mig_session_token() (single use). */
	const char *token;
	/** The user this client is; optional. The engine refuses a token
	 *  minted for another user ("token is for another user"). */
	const char *user;
	/** More URLs of the same engine, tried in order when `url` cannot be
	 *  reached, before backing off. */
	const char *const *fallback_urls;
	size_t fallback_count;
	/** Backoff after every URL failed: initial delay, doubled per round up
	 *  to backoff_max_ms; 0 means 100 and 5000 ms. */
	unsigned int backoff_initial_ms;
	unsigned int backoff_max_ms;
	/** Random spread of each delay, in percent (+/-); 0 means 20, a
	 *  negative value means none; at most 100. */
	int jitter_percent;
	/** Give up (FAILED) after this many failed connection attempts in a
	 *  row; 0 means never. */
	unsigned int max_attempts;
	/** An attempt that is not attached after this long fails; 0 means
	 *  5000 ms. */
	unsigned int connect_timeout_ms;
	/** PEM CA bundle to verify wss:// engines; NULL uses the OS store. */
	const char *tls_ca_file;
	/** Client certificate and key, for engines that require one. */
	const char *tls_cert_file;
	const char *tls_key_file;
	/** Callbacks (may be NULL) and their last argument. */
	mig_client_state_fn on_state;
	mig_client_redirect_fn on_redirect;
	void *user_data;
} mig_client_options;

/**
 * Create the helper and start attaching (the first callbacks come with the
 * first mig_client_dispatch()).
 * @param out receives the helper; NULL on failure.
 * @return 0, MIG_EINVAL (missing or bad URL or token, bad option),
 *         MIG_ENOMEM, MIG_ETLS (TLS files unusable), MIG_ESYSTEM.
 * Ownership: free the helper with mig_client_free().
 * Thread: any.
 */
MIG_EXPORT int mig_client_new(mig_client **out, const mig_client_options *options);

/**
 * Close the connection and free the helper. No callback runs. Accepts NULL.
 * Thread: the dispatching thread, not from inside a callback.
 */
MIG_EXPORT void mig_client_free(mig_client *client);

/**
 * A file descriptor that is readable when mig_client_dispatch() has work.
 * @return the fd, valid until mig_client_free().
 * Thread: any.
 */
MIG_EXPORT int mig_client_fd(const mig_client *client);

/**
 * Handle what the connection brought, run timers, and call the callbacks.
 * Never blocks.
 * @return 0, or MIG_EINVAL.
 * Thread: the dispatching thread. Callback-safe: no.
 */
MIG_EXPORT int mig_client_dispatch(mig_client *client);

/**
 * Start over with a new token (e.g. after FAILED, or when the app got a
 * fresh token for another engine): closes the current connection, forgets
 * the backoff, and attaches at `url` (NULL: the URLs in use).
 * @return 0, MIG_EINVAL (bad URL or token), MIG_ENOMEM.
 * Thread: the dispatching thread. Callback-safe: yes.
 */
MIG_EXPORT int mig_client_attach(mig_client *client, const char *url, const char *token);

/** The current state. Thread: any. */
MIG_EXPORT mig_client_state mig_client_get_state(const mig_client *client);

/** "CONNECTING", ... ; "?" for an unknown value. Thread: any. */
MIG_EXPORT const char *mig_client_state_name(mig_client_state state);

/**
 * The engine the helper is attached to, or was last attached to ("" if
 * none yet), and that engine's app URL ("" if it advertises none).
 * @return strings owned by the helper, valid until the next dispatch.
 * Thread: the dispatching thread.
 */
MIG_EXPORT const char *mig_client_engine_id(const mig_client *client);
MIG_EXPORT const char *mig_client_app_url(const mig_client *client);

/**
 * Detail of the last failure ("" if none).
 * @return a string owned by the helper, valid until the next dispatch.
 */
MIG_EXPORT const char *mig_client_last_error(const mig_client *client);

/**
 * Failover (docs/FAILOVER.md): the standby engine's session URL and a
 * failover token for it (minted at the primary with
 * mig_replica_failover_token() and handed over by the app). When the engine
 * stays unreachable for after_ms (0 means 3000) — its connection was lost
 * and every attempt since failed — the helper attaches at the standby with
 * that token instead. The standby refuses (MIG_ENOUSER, the token is not
 * used up) until it has promoted the user; the helper keeps trying there
 * with its backoff, and is ATTACHED there once the user is promoted. Used
 * once: after attaching at the standby, set a new standby for a further
 * failover; a redirect (the user migrated) also clears it. Calling again replaces the standby (e.g. with a fresh token
 * before the old one expires); url NULL clears it.
 * @return 0, MIG_EINVAL (bad URL or token), MIG_ENOMEM.
 * Ownership: the strings are copied.
 * Thread: the dispatching thread. Callback-safe: yes.
 */
MIG_EXPORT int mig_client_set_standby(mig_client *client, const char *url, const char *token,
				      unsigned int after_ms);

#ifdef __cplusplus
}
#endif

#endif /* MIGRATE_CLIENT_H */

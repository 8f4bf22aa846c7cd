/* Private to client.c (the reconnect helper's state machine) and
 * client_api.c (its public functions). */
#ifndef MIG_CLIENT_INT_H
#define MIG_CLIENT_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "migrate/client.h"
#include "transport.h"

#define DEFAULT_BACKOFF_INITIAL_MS 100u
#define DEFAULT_BACKOFF_MAX_MS 5000u
#define DEFAULT_JITTER_PERCENT 20
#define DEFAULT_CONNECT_TIMEOUT_MS 5000u
#define CLIENT_MAX_FRAME (64u * 1024)
#define MAX_URLS 64

enum timer_kind {
	TIMER_NONE,
	TIMER_BACKOFF,
	TIMER_CONNECT
};

/* A callback owed to the app. */
struct note {
	struct note *next;
	bool redirect;
	mig_client_state state;
	int error;
	char *detail;
	/* redirect */
	char *user, *app_url, *session_url, *engine_id;
};

struct mig_client {
	mig__transport *transport;
	mig__evq events;
	int timer_fd;
	int wake_fd;
	int epoll_fd;

	/* Options. */
	char *user;
	char **fallbacks;
	size_t nfallbacks;
	unsigned backoff_initial_ms;
	unsigned backoff_max_ms;
	unsigned jitter_percent;
	unsigned max_attempts;
	unsigned connect_timeout_ms;
	mig_client_state_fn on_state;
	mig_client_redirect_fn on_redirect;
	void *user_data;

	/* Where and how to attach next. */
	char **urls; /* the current list: primary first */
	size_t nurls;
	size_t url_idx;
	char *token; /* single use: replaced by the resume or redirect token */
	/* Failover (mig_client_set_standby): the standby engine's session URL
	 * and a token it accepts once it promoted the user, tried when the
	 * engine stayed unreachable for standby_after_ms since lost_us. */
	char *standby_url;
	char *standby_token;
	unsigned standby_after_ms;
	bool on_standby;  /* attaching there: "not promoted yet" is retried */
	uint64_t lost_us; /* when the engine was last known good; 0 = attached */

	/* State. */
	_Atomic int state;
	uint64_t conn;     /* 0 = none */
	unsigned attempts; /* failed attempts in a row */
	unsigned rounds;   /* failed rounds over every URL, in a row */
	size_t tried;      /* URLs tried in this round */
	enum timer_kind timer;
	uint64_t rng;
	char engine_id[MIG__ENGINE_ID_MAX + 1];
	char app_url[MIG__URL_MAX + 1];
	char last_error[256];
	struct note *notes_head, *notes_tail;
	/* A callback whose note could not be allocated is not lost: the
	 * latest such state change, and the latest such redirect, wait here
	 * and are delivered after the queued notes. A later state note
	 * supersedes the owed state (the app's last word is never stale). */
	bool state_owed;
	mig_client_state owed_state;
	int owed_error;
	char owed_detail[512];
	bool redirect_owed;
	char owed_user[MIG__USER_MAX + 1];
	char owed_app_url[MIG__URL_MAX + 1];
	char owed_session_url[MIG__URL_MAX + 1];
	char owed_engine_id[MIG__ENGINE_ID_MAX + 1];
	bool dispatching;
};

/* client.c */
void mig__client_note_free(struct note *n);
/* Replaces the URL list: `primary`, then the fallbacks if asked. */
int mig__client_set_urls(mig_client *c, const char *primary, bool with_fallbacks);
int mig__client_set_token(mig_client *c, const char *token);
bool mig__client_valid_url(const char *url);
/* Connects to the current URL and queues the Attach behind the handshake. */
void mig__client_start_connect(mig_client *c);
void mig__client_drop_conn(mig_client *c, const char *why);
/* The timer fired / one event of the transport, in dispatch. */
void mig__client_on_timer(mig_client *c);
void mig__client_on_event(mig_client *c, mig__tev *ev);

#endif

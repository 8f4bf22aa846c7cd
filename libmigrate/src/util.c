/* Small helpers: time, strings, identifier validation, error texts. */
#include <string.h>
#include <time.h>

#include "common.h"

uint64_t mig__now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t mig__wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void mig__strlcpy(char *dst, const char *src, size_t size)
{
	if (!size)
		return;
	size_t n = strnlen(src, size - 1);
	memcpy(dst, src, n);
	dst[n] = '\0';
}

bool mig__valid_user(const char *user)
{
	if (!user)
		return false;
	size_t n = strnlen(user, MIG__USER_MAX + 1);
	if (n == 0 || n > MIG__USER_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)user[i];
		if (c <= 0x20 || c >= 0x7f)
			return false;
	}
	return true;
}

bool mig__valid_domain_name(const char *name)
{
	if (!name)
		return false;
	size_t n = strnlen(name, MIG__NAME_MAX + 1);
	if (n == 0 || n > MIG__NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			  (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
		if (!ok)
			return false;
	}
	return true;
}

bool mig__valid_mid(const char *mid)
{
	if (!mid || strnlen(mid, MIG__MID_LEN + 1) != MIG__MID_LEN)
		return false;
	for (size_t i = 0; i < MIG__MID_LEN; i++) {
		char c = mid[i];
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return false;
	}
	return true;
}

bool mig__valid_app_url(const char *url)
{
	if (!url)
		return false;
	size_t n = strnlen(url, MIG__URL_MAX + 1);
	if (n == 0 || n > MIG__URL_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)url[i] <= 0x20 || (unsigned char)url[i] >= 0x7f)
			return false;
	const char *sep = strstr(url, "://");
	if (!sep || sep == url || !sep[3])
		return false;
	for (const char *p = url; p < sep; p++) {
		char ch = *p;
		bool ok = (ch >= 'a' && ch <= 'z') ||
			  (p > url && ((ch >= '0' && ch <= '9') || ch == '+' || ch == '.' ||
				       ch == '-'));
		if (!ok)
			return false;
	}
	return true;
}

static const struct {
	int code;
	const char *name;
	const char *text;
} error_table[] = {
	{MIG_OK, "MIG_OK", "success"},
	{MIG_EINVAL, "MIG_EINVAL", "invalid argument"},
	{MIG_ENOMEM, "MIG_ENOMEM", "out of memory"},
	{MIG_ENOUSER, "MIG_ENOUSER", "no such user here"},
	{MIG_EEXIST, "MIG_EEXIST", "already exists"},
	{MIG_EBUSY, "MIG_EBUSY", "user is busy (already migrating or not active)"},
	{MIG_ESTATE, "MIG_ESTATE", "not allowed in the current state"},
	{MIG_ECONNECT, "MIG_ECONNECT", "could not connect to the peer"},
	{MIG_ECLOSED, "MIG_ECLOSED", "the connection closed"},
	{MIG_ETIMEDOUT, "MIG_ETIMEDOUT", "timed out"},
	{MIG_EAUTH, "MIG_EAUTH", "authentication failed"},
	{MIG_EPROTO, "MIG_EPROTO", "malformed or unexpected message"},
	{MIG_ETOOBIG, "MIG_ETOOBIG", "message or state over the size cap"},
	{MIG_EREJECTED, "MIG_EREJECTED", "the destination refused the migration"},
	{MIG_ECALLBACK, "MIG_ECALLBACK", "an application callback reported failure"},
	{MIG_ECANCELED, "MIG_ECANCELED", "canceled"},
	{MIG_EVERSION, "MIG_EVERSION", "version not supported"},
	{MIG_ENODOMAIN, "MIG_ENODOMAIN", "state domain not registered here"},
	{MIG_ETLS, "MIG_ETLS", "TLS setup or verification failed"},
	{MIG_EIO, "MIG_EIO", "I/O error"},
	{MIG_ESYSTEM, "MIG_ESYSTEM", "unexpected system error"},
	{MIG_EUNKNOWN, "MIG_EUNKNOWN", "the peer has no record of the migration"},
	{MIG_EPARKED, "MIG_EPARKED", "outcome unknown; the user is parked"},
};

MIG_EXPORT const char *mig_strerror(int err)
{
	for (size_t i = 0; i < MIG__ARRAY_LEN(error_table); i++)
		if (error_table[i].code == err)
			return error_table[i].text;
	return "unknown error";
}

MIG_EXPORT const char *mig_err_name(int err)
{
	for (size_t i = 0; i < MIG__ARRAY_LEN(error_table); i++)
		if (error_table[i].code == err)
			return error_table[i].name;
	return "MIG_E?";
}

MIG_EXPORT const char *mig_user_state_name(mig_user_state state)
{
	static const char *const names[] = {"absent",   "active",   "migrating",
					    "paused",   "incoming", "parked"};
	return (unsigned)state < MIG__ARRAY_LEN(names) ? names[state] : "?";
}

MIG_EXPORT const char *mig_event_type_name(mig_event_type type)
{
	static const char *const names[] = {"started",  "prepared",  "committed", "aborted",
					    "incoming", "activated", "dropped",   "progress"};
	return (unsigned)type < MIG__ARRAY_LEN(names) ? names[type] : "?";
}

#define MIG__STR2(x) #x
#define MIG__STR(x) MIG__STR2(x)

MIG_EXPORT const char *mig_version(void)
{
	return MIG__STR(MIG_VERSION_MAJOR) "." MIG__STR(MIG_VERSION_MINOR) "." MIG__STR(
		MIG_VERSION_PATCH);
}

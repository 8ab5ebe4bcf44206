/*
 * iotfleet_auth: iotfleet's Mosquitto plugin (plugin API v5), loaded per listener.
 *
 * Mosquitto calls plugin callbacks before its own password_file / acl_file checks, so this
 * plugin can refuse what Mosquitto itself cannot express, and defers to Mosquitto otherwise
 * (its own password and ACL checks still run: defense in depth).
 *
 * Options (plugin_opt_<key> under the listener; a list option is repeated, one item a line):
 *   listener        label used in log lines (the listener's port)
 *   password_file   the listener's password file ($7$ PBKDF2-SHA512); enables the login check
 *   require_cn      "true": the client certificate's CN must equal the MQTT username
 *   local_only      identities that may only log in from a local address
 *   local_addresses the addresses counted as local (loopback, the broker's bind addresses)
 *   retain_topics   topic filters on which a retained PUBLISH is allowed; refused elsewhere
 *   identities_file the broker's usernames, one a line ('#' lines are comments): no other name
 *                   logs in, or, on certificate listeners where no login callback runs, may
 *                   do anything (the ACL's patterns would give any name its device topics)
 *   no_access       identities that may do nothing on this listener: a certificate+password
 *                   client on a certificate-only listener, where Mosquitto runs no login
 *                   callback (its certificate alone must not be enough)
 *
 * Each refused login is logged at NOTICE with username, client address, listener and reason.
 * The password and identities files are read again on SIGHUP (MOSQ_EVT_RELOAD).
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define MAX_LINE 4096
#define MAX_SALT 64
#define MAX_HASH 64
/* Iterations of the dummy hash computed for an unknown user, so that a refusal takes about
 * as long whether or not the user exists. */
#define DUMMY_ITERATIONS 10000

struct entry {
	char *user;
	int iterations;
	unsigned char salt[MAX_SALT];
	int salt_len;
	unsigned char hash[MAX_HASH];
	int hash_len;
};

struct list {
	char **items;
	int count;
};

struct instance {
	mosquitto_plugin_id_t *id;
	char *listener;
	char *password_file;
	bool require_cn;
	struct list local_only;
	struct list local_addresses;
	struct list retain_topics;
	struct list no_access;
	char *identities_file;
	struct list identities; /* sorted, for bsearch */
	struct entry *entries;
	int entry_count;
	int dummy_iterations;
};

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for (int i = 0; i < supported_version_count; i++) {
		if (supported_versions[i] == 5) {
			return 5;
		}
	}
	return -1;
}

static void list_free(struct list *list)
{
	for (int i = 0; i < list->count; i++) {
		free(list->items[i]);
	}
	free(list->items);
	list->items = NULL;
	list->count = 0;
}

/* One item per option line: topic filters may contain spaces. */
static int list_add(struct list *list, const char *value)
{
	char **grown = realloc(list->items, sizeof(char *) * (size_t)(list->count + 1));
	if (grown == NULL) {
		return MOSQ_ERR_NOMEM;
	}
	list->items = grown;
	list->items[list->count] = strdup(value);
	if (list->items[list->count] == NULL) {
		return MOSQ_ERR_NOMEM;
	}
	list->count++;
	return MOSQ_ERR_SUCCESS;
}

static bool list_has(const struct list *list, const char *value)
{
	for (int i = 0; i < list->count; i++) {
		if (strcmp(list->items[i], value) == 0) {
			return true;
		}
	}
	return false;
}

static int compare_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool is_identity(const struct instance *inst, const char *user)
{
	if (inst->identities_file == NULL) {
		return true;
	}
	if (user == NULL || inst->identities.count == 0) {
		return false;
	}
	return bsearch(&user, inst->identities.items, (size_t)inst->identities.count,
		       sizeof(char *), compare_names) != NULL;
}

/* Read the identities file; on failure the old list stays in place. */
static int load_identities(struct instance *inst)
{
	FILE *file = fopen(inst->identities_file, "r");
	char line[MAX_LINE];
	struct list names = {NULL, 0};

	if (file == NULL) {
		mosquitto_log_printf(MOSQ_LOG_ERR, "iotfleet_auth: listener %s: cannot read %s",
				     inst->listener, inst->identities_file);
		return MOSQ_ERR_UNKNOWN;
	}
	while (fgets(line, sizeof(line), file)) {
		line[strcspn(line, "\r\n")] = '\0';
		if (line[0] == '\0' || line[0] == '#') {
			continue;
		}
		if (list_add(&names, line) != MOSQ_ERR_SUCCESS) {
			list_free(&names);
			fclose(file);
			return MOSQ_ERR_NOMEM;
		}
	}
	fclose(file);
	if (names.count > 1) {
		qsort(names.items, (size_t)names.count, sizeof(char *), compare_names);
	}
	list_free(&inst->identities);
	inst->identities = names;
	return MOSQ_ERR_SUCCESS;
}

static void entries_free(struct entry *entries, int count)
{
	for (int i = 0; i < count; i++) {
		free(entries[i].user);
	}
	free(entries);
}

/* Decode base64 into out (at most max bytes); returns the length or -1. */
static int b64_decode(const char *in, unsigned char *out, int max)
{
	size_t len = strlen(in);
	unsigned char buf[3 * (MAX_LINE / 4) + 3];
	int n;
	int pad = 0;

	if (len == 0 || len % 4 != 0 || len > MAX_LINE) {
		return -1;
	}
	n = EVP_DecodeBlock(buf, (const unsigned char *)in, (int)len);
	if (n < 0) {
		return -1;
	}
	if (in[len - 1] == '=') pad++;
	if (in[len - 2] == '=') pad++;
	n -= pad;
	if (n <= 0 || n > max) {
		return -1;
	}
	memcpy(out, buf, (size_t)n);
	return n;
}

/* One "user:$7$iterations$salt$hash" line; false if it is not a $7$ entry. */
static bool parse_entry(char *line, struct entry *entry)
{
	char *colon = strchr(line, ':');
	char *fields[4];
	char *save = NULL;
	int count = 0;
	long iterations;
	char *end;

	if (colon == NULL || colon == line) {
		return false;
	}
	*colon = '\0';
	for (char *tok = strtok_r(colon + 1, "$", &save); tok; tok = strtok_r(NULL, "$", &save)) {
		if (count == 4) {
			return false; /* more fields than $7$iterations$salt$hash */
		}
		fields[count++] = tok;
	}
	if (count != 4 || strcmp(fields[0], "7") != 0) {
		return false;
	}
	iterations = strtol(fields[1], &end, 10);
	if (*end != '\0' || iterations < 1 || iterations > 100000000) {
		return false;
	}
	entry->iterations = (int)iterations;
	entry->salt_len = b64_decode(fields[2], entry->salt, MAX_SALT);
	entry->hash_len = b64_decode(fields[3], entry->hash, MAX_HASH);
	if (entry->salt_len < 0 || entry->hash_len < 0) {
		return false;
	}
	entry->user = strdup(line);
	return entry->user != NULL;
}

/* Read the password file; on failure the old entries stay in place. */
static int load_password_file(struct instance *inst)
{
	FILE *file = fopen(inst->password_file, "r");
	char line[MAX_LINE];
	struct entry *entries = NULL;
	int count = 0;
	int skipped = 0;

	if (file == NULL) {
		mosquitto_log_printf(MOSQ_LOG_ERR, "iotfleet_auth: listener %s: cannot read %s",
				     inst->listener, inst->password_file);
		return MOSQ_ERR_UNKNOWN;
	}
	while (fgets(line, sizeof(line), file)) {
		struct entry entry;
		line[strcspn(line, "\r\n")] = '\0';
		if (line[0] == '\0' || line[0] == '#') {
			continue;
		}
		memset(&entry, 0, sizeof(entry));
		if (!parse_entry(line, &entry)) {
			skipped++;
			continue;
		}
		struct entry *grown = realloc(entries, sizeof(struct entry) * (size_t)(count + 1));
		if (grown == NULL) {
			free(entry.user);
			entries_free(entries, count);
			fclose(file);
			return MOSQ_ERR_NOMEM;
		}
		entries = grown;
		entries[count++] = entry;
	}
	fclose(file);
	entries_free(inst->entries, inst->entry_count);
	inst->entries = entries;
	inst->entry_count = count;
	inst->dummy_iterations = count ? entries[0].iterations : DUMMY_ITERATIONS;
	if (skipped) {
		mosquitto_log_printf(MOSQ_LOG_WARNING,
				     "iotfleet_auth: listener %s: %d entries of %s are not $7$ hashes "
				     "and never match",
				     inst->listener, skipped, inst->password_file);
	}
	return MOSQ_ERR_SUCCESS;
}

static const struct entry *find_entry(const struct instance *inst, const char *user)
{
	for (int i = 0; i < inst->entry_count; i++) {
		if (strcmp(inst->entries[i].user, user) == 0) {
			return &inst->entries[i];
		}
	}
	return NULL;
}

static bool password_matches(const struct instance *inst, const struct entry *entry,
			     const char *password)
{
	unsigned char actual[MAX_HASH];
	static const unsigned char dummy_salt[12] = {0};
	size_t len = strlen(password);

	if (entry == NULL) {
		/* Same work as a real check, then refuse. */
		PKCS5_PBKDF2_HMAC(password, (int)len, dummy_salt, sizeof(dummy_salt),
				  inst->dummy_iterations, EVP_sha512(), MAX_HASH, actual);
		return false;
	}
	if (PKCS5_PBKDF2_HMAC(password, (int)len, entry->salt, entry->salt_len, entry->iterations,
			      EVP_sha512(), entry->hash_len, actual) != 1) {
		return false;
	}
	return CRYPTO_memcmp(actual, entry->hash, (size_t)entry->hash_len) == 0;
}

/* A copy of untrusted text safe for one log line (printable ASCII, bounded). */
static void printable(const char *in, char *out, size_t size)
{
	size_t i = 0;
	if (in == NULL) {
		snprintf(out, size, "(none)");
		return;
	}
	for (; in[i] && i + 1 < size; i++) {
		unsigned char c = (unsigned char)in[i];
		out[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
	}
	out[i] = '\0';
	if (in[i]) {
		snprintf(out + (size > 4 ? size - 4 : 0), 4, "...");
	}
}

/* The peer address without an IPv4-mapped IPv6 prefix. */
static const char *client_address(const struct mosquitto *client)
{
	const char *address = mosquitto_client_address(client);
	if (address == NULL) {
		return "";
	}
	if (strncmp(address, "::ffff:", 7) == 0 && strchr(address + 7, '.') != NULL) {
		return address + 7;
	}
	return address;
}

static bool is_local(const struct instance *inst, const char *address)
{
	return list_has(&inst->local_addresses, address);
}

static int refuse(const struct instance *inst, const char *username, const char *address,
		  const char *reason)
{
	char user[80];
	char where[64];
	printable(username, user, sizeof(user));
	printable(address, where, sizeof(where));
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			     "iotfleet_auth: refused login of '%s' from %s on listener %s: %s", user,
			     where, inst->listener, reason);
	return MOSQ_ERR_AUTH;
}

/* The certificate's CN equals username (false without a certificate or CN). */
static bool cn_is(const struct mosquitto *client, const char *username, char *cn, int cn_size)
{
	X509 *cert = mosquitto_client_certificate(client);
	bool same = false;
	cn[0] = '\0';
	if (cert == NULL) {
		return false;
	}
	X509_NAME *subject = X509_get_subject_name(cert);
	int len = subject ? X509_NAME_get_text_by_NID(subject, NID_commonName, cn, cn_size) : -1;
	if (len > 0 && len < cn_size && (size_t)len == strlen(cn)) {
		same = strcmp(cn, username) == 0;
	}
	X509_free(cert);
	return same;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	struct instance *inst = userdata;
	const char *address = client_address(ed->client);
	char cn[256];
	char reason[400];
	(void)event;

	if (ed->username == NULL || ed->username[0] == '\0') {
		return refuse(inst, ed->username, address, "no username");
	}
	if (!is_identity(inst, ed->username)) {
		return refuse(inst, ed->username, address, "not an identity of this broker");
	}
	if (list_has(&inst->local_only, ed->username) && !is_local(inst, address)) {
		return refuse(inst, ed->username, address, "local-only identity from a remote address");
	}
	if (inst->require_cn && !cn_is(ed->client, ed->username, cn, sizeof(cn))) {
		char shown[80];
		printable(cn[0] ? cn : NULL, shown, sizeof(shown));
		snprintf(reason, sizeof(reason), "client certificate CN '%s' is not the username",
			 shown);
		return refuse(inst, ed->username, address, reason);
	}
	if (inst->password_file != NULL) {
		if (ed->password == NULL) {
			return refuse(inst, ed->username, address, "no password");
		}
		const struct entry *entry = find_entry(inst, ed->username);
		if (!password_matches(inst, entry, ed->password)) {
			return refuse(inst, ed->username, address,
				      entry ? "wrong password" : "unknown username");
		}
	}
	/* Mosquitto's own password_file check runs next. */
	return MOSQ_ERR_PLUGIN_DEFER;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	struct instance *inst = userdata;
	const char *username = mosquitto_client_username(ed->client);
	(void)event;

	/* Also covers certificate listeners, where no login callback runs. */
	if (!is_identity(inst, username)) {
		return MOSQ_ERR_ACL_DENIED;
	}
	if (username && list_has(&inst->local_only, username) &&
	    !is_local(inst, client_address(ed->client))) {
		return MOSQ_ERR_ACL_DENIED;
	}
	if (username && list_has(&inst->no_access, username)) {
		return MOSQ_ERR_ACL_DENIED;
	}
	if (ed->access == MOSQ_ACL_WRITE && ed->retain) {
		for (int i = 0; i < inst->retain_topics.count; i++) {
			bool match = false;
			if (mosquitto_topic_matches_sub(inst->retain_topics.items[i], ed->topic,
							&match) == MOSQ_ERR_SUCCESS &&
			    match) {
				return MOSQ_ERR_PLUGIN_DEFER;
			}
		}
		mosquitto_log_printf(MOSQ_LOG_DEBUG,
				     "iotfleet_auth: listener %s: retained publish refused", inst->listener);
		return MOSQ_ERR_ACL_DENIED;
	}
	return MOSQ_ERR_PLUGIN_DEFER;
}

static int on_reload(int event, void *event_data, void *userdata)
{
	struct instance *inst = userdata;
	(void)event;
	(void)event_data;
	if (inst->password_file != NULL && load_password_file(inst) != MOSQ_ERR_SUCCESS) {
		mosquitto_log_printf(MOSQ_LOG_ERR,
				     "iotfleet_auth: listener %s: keeping the previous passwords",
				     inst->listener);
	}
	if (inst->identities_file != NULL && load_identities(inst) != MOSQ_ERR_SUCCESS) {
		mosquitto_log_printf(MOSQ_LOG_ERR,
				     "iotfleet_auth: listener %s: keeping the previous identities",
				     inst->listener);
	}
	/* Not DEFER: Mosquitto would stop its own reload of this listener's security. */
	return MOSQ_ERR_SUCCESS;
}

static void instance_free(struct instance *inst)
{
	if (inst == NULL) {
		return;
	}
	free(inst->listener);
	free(inst->password_file);
	list_free(&inst->local_only);
	list_free(&inst->local_addresses);
	list_free(&inst->retain_topics);
	list_free(&inst->no_access);
	free(inst->identities_file);
	list_free(&inst->identities);
	entries_free(inst->entries, inst->entry_count);
	free(inst);
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
			  struct mosquitto_opt *options, int option_count)
{
	struct instance *inst = calloc(1, sizeof(struct instance));
	int rc = MOSQ_ERR_SUCCESS;

	if (inst == NULL) {
		return MOSQ_ERR_NOMEM;
	}
	inst->id = identifier;
	inst->dummy_iterations = DUMMY_ITERATIONS;
	for (int i = 0; i < option_count && rc == MOSQ_ERR_SUCCESS; i++) {
		const char *key = options[i].key;
		const char *value = options[i].value ? options[i].value : "";
		if (strcmp(key, "listener") == 0) {
			free(inst->listener);
			inst->listener = strdup(value);
		} else if (strcmp(key, "password_file") == 0) {
			free(inst->password_file);
			inst->password_file = strdup(value);
		} else if (strcmp(key, "identities_file") == 0) {
			free(inst->identities_file);
			inst->identities_file = strdup(value);
		} else if (strcmp(key, "require_cn") == 0) {
			inst->require_cn = strcmp(value, "true") == 0;
		} else if (strcmp(key, "local_only") == 0) {
			rc = list_add(&inst->local_only, value);
		} else if (strcmp(key, "local_addresses") == 0) {
			rc = list_add(&inst->local_addresses, value);
		} else if (strcmp(key, "retain_topics") == 0) {
			rc = list_add(&inst->retain_topics, value);
		} else if (strcmp(key, "no_access") == 0) {
			rc = list_add(&inst->no_access, value);
		} else {
			mosquitto_log_printf(MOSQ_LOG_ERR, "iotfleet_auth: unknown option %s", key);
			rc = MOSQ_ERR_INVAL;
		}
	}
	if (rc == MOSQ_ERR_SUCCESS && inst->listener == NULL) {
		inst->listener = strdup("?");
	}
	if (rc == MOSQ_ERR_SUCCESS && inst->password_file != NULL) {
		rc = load_password_file(inst);
	}
	if (rc == MOSQ_ERR_SUCCESS && inst->identities_file != NULL) {
		rc = load_identities(inst);
	}
	if (rc == MOSQ_ERR_SUCCESS && (inst->password_file || inst->require_cn ||
				       inst->local_only.count || inst->identities_file)) {
		rc = mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL,
						 inst);
	}
	if (rc == MOSQ_ERR_SUCCESS) {
		rc = mosquitto_callback_register(identifier, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL,
						 inst);
	}
	if (rc == MOSQ_ERR_SUCCESS) {
		rc = mosquitto_callback_register(identifier, MOSQ_EVT_RELOAD, on_reload, NULL, inst);
	}
	if (rc != MOSQ_ERR_SUCCESS) {
		instance_free(inst);
		return rc;
	}
	*userdata = inst;
	mosquitto_log_printf(MOSQ_LOG_INFO, "iotfleet_auth: listener %s: %d passwords, %d identities%s",
			     inst->listener, inst->entry_count, inst->identities.count,
			     inst->require_cn ? ", certificate CN = username" : "");
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	struct instance *inst = userdata;
	(void)options;
	(void)option_count;
	if (inst != NULL) {
		mosquitto_callback_unregister(inst->id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
		mosquitto_callback_unregister(inst->id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
		mosquitto_callback_unregister(inst->id, MOSQ_EVT_RELOAD, on_reload, NULL);
	}
	instance_free(inst);
	return MOSQ_ERR_SUCCESS;
}

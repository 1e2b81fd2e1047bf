/*
 * A no-op milter in C on libmilter: what any milter costs Postfix before its own language or
 * work is counted. benchmarks/milter_overhead.py compiles it (gcc, libmilter-dev) and runs it
 * in two forms:
 *
 *   every step (default)  every callback registered and answered CONTINUE, as the no-op
 *                         pymilter (benchmarks/noop_milter.py) does;
 *   --no-reply            sent the steps smtp_policy's milter is sent with its shipped
 *                         settings (connect, HELO, MAIL, RCPT, DATA, end-of-message; no
 *                         headers, body, end-of-headers or unknown commands), answering none
 *                         but end-of-message (SMFIP_NR_*): the floor of a milter that records
 *                         every stage;
 *   --eom-only            the floor: it negotiates away every step Postfix lets a milter skip
 *                         (SMFIP_NOCONNECT ... SMFIP_NODATA) and is sent only end-of-message.
 *
 * It counts end-of-message calls and, once libmilter has stopped (SIGTERM), writes
 * {"eom": N, "maxrss_kb": N} to the --stats file.
 *
 *   gcc -O2 -o noop_milter benchmarks/noop_milter.c -lmilter -lpthread
 *   ./noop_milter --socket unix:/path/sock --stats FILE [--no-reply | --eom-only]
 */

#include <libmilter/mfapi.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static pthread_mutex_t eom_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long eom_count;
static int eom_only, no_reply;

static sfsistat go_on_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr) { return SMFIS_CONTINUE; }
static sfsistat go_on_helo(SMFICTX *ctx, char *name) { return SMFIS_CONTINUE; }
static sfsistat go_on_args(SMFICTX *ctx, char **argv) { return SMFIS_CONTINUE; }
static sfsistat go_on_header(SMFICTX *ctx, char *name, char *value) { return SMFIS_CONTINUE; }
static sfsistat go_on(SMFICTX *ctx) { return SMFIS_CONTINUE; }
static sfsistat go_on_body(SMFICTX *ctx, unsigned char *chunk, size_t size) { return SMFIS_CONTINUE; }
static sfsistat go_on_unknown(SMFICTX *ctx, const char *command) { return SMFIS_CONTINUE; }

static sfsistat quiet_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr) { return SMFIS_NOREPLY; }
static sfsistat quiet_helo(SMFICTX *ctx, char *name) { return SMFIS_NOREPLY; }
static sfsistat quiet_args(SMFICTX *ctx, char **argv) { return SMFIS_NOREPLY; }
static sfsistat quiet(SMFICTX *ctx) { return SMFIS_NOREPLY; }

static sfsistat count_eom(SMFICTX *ctx)
{
    pthread_mutex_lock(&eom_lock);
    eom_count++;
    pthread_mutex_unlock(&eom_lock);
    return SMFIS_CONTINUE;
}

/* --eom-only: ask for no actions and skip every step the MTA offers to leave out. */
static sfsistat negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2,
                          unsigned long f3, unsigned long *pf0, unsigned long *pf1,
                          unsigned long *pf2, unsigned long *pf3)
{
    unsigned long skip = SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NOMAIL | SMFIP_NORCPT |
                         SMFIP_NOBODY | SMFIP_NOHDRS | SMFIP_NOEOH | SMFIP_NOUNKNOWN |
                         SMFIP_NODATA;
    *pf0 = 0;
    *pf1 = f1 & skip;
    *pf2 = 0;
    *pf3 = 0;
    return SMFIS_CONTINUE;
}

/* --no-reply: the steps of every stage, none of them answered; no content steps. */
static sfsistat negotiate_no_reply(SMFICTX *ctx, unsigned long f0, unsigned long f1,
                                   unsigned long f2, unsigned long f3, unsigned long *pf0,
                                   unsigned long *pf1, unsigned long *pf2, unsigned long *pf3)
{
    unsigned long wanted = SMFIP_NOBODY | SMFIP_NOHDRS | SMFIP_NOEOH | SMFIP_NOUNKNOWN |
                           SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_MAIL | SMFIP_NR_RCPT |
                           SMFIP_NR_DATA;
    if ((f1 & wanted) != wanted)
        return SMFIS_REJECT; /* the MTA cannot leave these out: no such floor to measure */
    *pf0 = 0;
    *pf1 = wanted;
    *pf2 = 0;
    *pf3 = 0;
    return SMFIS_CONTINUE;
}

int main(int argc, char **argv)
{
    const char *conn = NULL, *stats = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc)
            conn = argv[++i];
        else if (strcmp(argv[i], "--stats") == 0 && i + 1 < argc)
            stats = argv[++i];
        else if (strcmp(argv[i], "--eom-only") == 0)
            eom_only = 1;
        else if (strcmp(argv[i], "--no-reply") == 0)
            no_reply = 1;
        else {
            fprintf(stderr, "usage: %s --socket SPEC [--stats FILE] [--no-reply | --eom-only]\n",
                    argv[0]);
            return 2;
        }
    }
    if (conn == NULL) {
        fprintf(stderr, "%s: --socket is required\n", argv[0]);
        return 2;
    }

    struct smfiDesc desc = {
        .xxfi_name = "noop-c",
        .xxfi_version = SMFI_VERSION,
        .xxfi_flags = 0,
        .xxfi_eom = count_eom,
    };
    if (eom_only) {
        desc.xxfi_negotiate = negotiate;
    } else if (no_reply) {
        desc.xxfi_negotiate = negotiate_no_reply;
        desc.xxfi_connect = quiet_connect;
        desc.xxfi_helo = quiet_helo;
        desc.xxfi_envfrom = quiet_args;
        desc.xxfi_envrcpt = quiet_args;
        desc.xxfi_data = quiet;
        desc.xxfi_abort = go_on;
        desc.xxfi_close = go_on;
    } else {
        desc.xxfi_connect = go_on_connect;
        desc.xxfi_helo = go_on_helo;
        desc.xxfi_envfrom = go_on_args;
        desc.xxfi_envrcpt = go_on_args;
        desc.xxfi_data = go_on;
        desc.xxfi_header = go_on_header;
        desc.xxfi_eoh = go_on;
        desc.xxfi_body = go_on_body;
        desc.xxfi_abort = go_on;
        desc.xxfi_close = go_on;
        desc.xxfi_unknown = go_on_unknown;
    }
    if (strncmp(conn, "unix:", 5) == 0)
        unlink(conn + 5);
    if (smfi_setconn((char *)conn) == MI_FAILURE || smfi_register(desc) == MI_FAILURE) {
        fprintf(stderr, "%s: cannot set up %s\n", argv[0], conn);
        return 1;
    }
    smfi_settimeout(600);
    int status = smfi_main();

    if (stats != NULL) {
        struct rusage usage;
        getrusage(RUSAGE_SELF, &usage);
        FILE *out = fopen(stats, "w");
        if (out == NULL)
            return 1;
        fprintf(out, "{\"eom\": %lu, \"maxrss_kb\": %ld}\n", eom_count, usage.ru_maxrss);
        fclose(out);
    }
    return status == MI_SUCCESS ? 0 : 1;
}

/*
 * loadgen: an epoll load generator for the chat line protocol.
 *
 * Wire contract: one request per line; every reply is one JSON object
 * followed by "\r\n\r\n".
 *
 * Two modes:
 *
 *   closed loop (default): open --conns connections, authenticate each
 *   distinct user once and share that token across the user's connections,
 *   check every connection with one "ping", then every connection loops
 *   "send one request, wait for its full reply".
 *   Requests are "send <token> <next user> <text>", every --inbox-every'th
 *   one an "inbox <token>". After --warmup seconds, replies are counted and
 *   their latencies recorded for --duration seconds.
 *
 *   idle (--idle): open --conns connections, authenticate as above, send
 *   one "ping" on each and wait for its reply, print "HOLD <n>" on stdout,
 *   keep the connections open and silent for --hold seconds, then close.
 *
 * --port may be given several times (or as a comma-separated list), e.g. for
 * several nodes of one cluster: connection i goes to the (i mod n)-th port,
 * so the connections, and each user's connections, are spread round-robin.
 *
 * Both modes print a human summary and, as the last line on stdout, one JSON
 * object. The program always ends by itself: setup is bounded by
 * --setup-timeout, the rest by --warmup + --duration or --hold.
 *
 * Single-threaded on purpose: run it pinned to its own core (taskset) and
 * check the "loadgen cpu" figure it prints stays well under 100%.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define DELIM "\r\n\r\n"
#define DELIM_LEN 4
#define MAX_IN_BUFFER (64u << 20)   /* a reply larger than this is an error */
#define MAX_EVENTS 1024
#define CONNECT_RETRIES 30          /* per connection, during setup only */
#define MAX_PORTS 16

/* ------------------------------------------------------------------ */
/* Latency histogram (log-linear, like HdrHistogram).                  */
/*                                                                      */
/* Values are microseconds. Below 1024 us every microsecond has its own */
/* bucket; above, each power of two is split into 512 buckets, so any   */
/* recorded value is off by less than 0.2%. Values up to 2^40 us fit.   */
/* ------------------------------------------------------------------ */

#define H_LINEAR 1024
#define H_SUB 512
#define H_MAX_MSB 40
#define H_BUCKETS (H_LINEAR + (H_MAX_MSB - 9) * H_SUB)

static uint64_t hist[H_BUCKETS];
static uint64_t hist_count;
static uint64_t hist_max_us;

static void hist_record(uint64_t us)
{
    size_t idx;
    if (us > hist_max_us)
        hist_max_us = us;
    if (us < H_LINEAR) {
        idx = (size_t)us;
    } else {
        int msb = 63 - __builtin_clzll(us);
        if (msb > H_MAX_MSB)
            msb = H_MAX_MSB, us = (1ull << (H_MAX_MSB + 1)) - 1;
        int shift = msb - 9;  /* us >> shift lies in [512, 1023] */
        idx = H_LINEAR + (size_t)(shift - 1) * H_SUB + ((us >> shift) - H_SUB);
    }
    hist[idx]++;
    hist_count++;
}

/* Midpoint of a bucket, in microseconds. */
static double hist_bucket_value(size_t idx)
{
    if (idx < H_LINEAR)
        return (double)idx;
    size_t rel = idx - H_LINEAR;
    int shift = (int)(rel / H_SUB) + 1;
    uint64_t low = (uint64_t)(rel % H_SUB + H_SUB) << shift;
    uint64_t width = 1ull << shift;
    return (double)low + (double)(width - 1) / 2.0;
}

/* The p-quantile (0 < p <= 1) in milliseconds; 0 when nothing was recorded. */
static double hist_quantile_ms(double p)
{
    if (hist_count == 0)
        return 0.0;
    uint64_t rank = (uint64_t)(p * (double)hist_count + 0.999999);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < H_BUCKETS; i++) {
        seen += hist[i];
        if (seen >= rank) {
            double v = hist_bucket_value(i);
            if (v > (double)hist_max_us)
                v = (double)hist_max_us;
            return v / 1000.0;
        }
    }
    return (double)hist_max_us / 1000.0;
}

/* ------------------------------------------------------------------ */
/* Options and state.                                                  */
/* ------------------------------------------------------------------ */

static struct {
    const char *host;
    int ports[MAX_PORTS];
    int n_ports;
    int conns;
    double duration;
    double warmup;
    double hold;
    double setup_timeout;
    int idle;
    int msg_size;
    int inbox_every;
    int connect_parallel;
    double interval;
    const char *password;
    char *users_arg;
    int quiet;
} opt = {
    .host = "127.0.0.1",
    .n_ports = 0,
    .conns = 1,
    .duration = 10.0,
    .warmup = 1.0,
    .hold = 10.0,
    .setup_timeout = 60.0,
    .idle = 0,
    .msg_size = 40,
    .inbox_every = 10,
    .connect_parallel = 128,
    .interval = 0.0,
    .password = "surabaya",
    .users_arg = NULL,
    .quiet = 0,
};

enum auth_state { AUTH_NONE, AUTH_PENDING, AUTH_DONE };

struct user {
    char *name;
    char token[128];
    enum auth_state auth;
    int recipient;  /* index of the user this one sends to */
};

enum conn_state {
    C_NEW,          /* not started yet */
    C_BACKOFF,      /* connect failed; retry at retry_at */
    C_CONNECTING,   /* non-blocking connect in progress */
    C_WAIT_TOKEN,   /* connected; another connection authenticates its user */
    C_AUTHING,      /* our auth request is in flight */
    C_READY,        /* closed loop: ping answered, waits for the load phase */
    C_BUSY,         /* a request is in flight */
    C_IDLE,         /* idle mode: ping answered, holding */
    C_DEAD,         /* gave up on this connection */
};

enum req_kind { R_NONE, R_AUTH, R_SEND, R_INBOX, R_PING };

struct conn {
    int fd;
    int user;
    int target;         /* index into server_addrs */
    enum conn_state state;
    enum req_kind req;
    int retries;
    uint64_t retry_at;  /* ns, for C_BACKOFF */
    uint64_t sent_at;   /* ns, when the in-flight request was issued */
    uint64_t seq;       /* requests issued on this connection */
    char *out;          /* unsent request bytes (only after a partial write) */
    size_t out_len, out_off, out_cap;
    char *in;           /* received bytes not yet forming a full reply */
    size_t in_len, in_cap;
    int want_out;       /* EPOLLOUT currently registered */
};

enum phase { PH_SETUP, PH_LOAD, PH_HOLD, PH_DONE };

static struct user *users;
static int n_users;
static struct conn *conns;
static int epfd;
static struct sockaddr_in server_addrs[MAX_PORTS];
static enum phase phase = PH_SETUP;
static char *message_text;  /* the send text, opt.msg_size bytes */
static char scratch[1 << 16];  /* read buffer and request builder */

/* Counters. */
static int n_connecting, n_backoff, n_settled, n_dead;
static int n_established;           /* settled when setup ended */
static uint64_t connect_retries;
static uint64_t t_start, t_load, t_warm_end, t_end;
static int measure_printed; /* "MEASURE" printed when the warmup ended */
static uint64_t reqs, reqs_send, reqs_inbox, errors, unexpected;
static uint64_t disconnects;        /* lost after setup */
static uint64_t setup_failures;     /* never became usable */
static uint64_t bytes_in, bytes_out;
static int errors_shown;
static struct rusage ru_load_start;
/* Per-interval figures for --interval. */
static uint64_t iv_reqs, iv_errors, iv_max_us, iv_next;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t secs_ns(double s)
{
    return (uint64_t)(s * 1e9);
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void note(const char *fmt, ...)
{
    if (opt.quiet)
        return;
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n);
    if (q == NULL)
        die("out of memory (%zu bytes)", n);
    return q;
}

/* ------------------------------------------------------------------ */
/* Connection lifecycle.                                               */
/* ------------------------------------------------------------------ */

static void epoll_set(struct conn *c, int op, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.ptr = c };
    if (epoll_ctl(epfd, op, c->fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
}

static void send_request(struct conn *c, enum req_kind kind);

static int is_settled(enum conn_state s)
{
    return s == C_READY || s == C_IDLE;
}

/* Move c to a new state, keeping the settled count right. */
static void set_state(struct conn *c, enum conn_state s)
{
    if (is_settled(c->state) && !is_settled(s))
        n_settled--;
    if (!is_settled(c->state) && is_settled(s))
        n_settled++;
    if (c->state == C_BACKOFF)
        n_backoff--;
    if (s == C_BACKOFF)
        n_backoff++;
    c->state = s;
}

static void close_fd(struct conn *c)
{
    if (c->fd >= 0) {
        close(c->fd);  /* also removes it from the epoll set */
        c->fd = -1;
    }
    c->in_len = 0;
    c->out_len = c->out_off = 0;
    c->want_out = 0;
    c->req = R_NONE;
}

static void start_connect(struct conn *c);

/*
 * The user's token is known: check the connection end to end with a ping.
 * A connect() that succeeded does not mean the server accepted the
 * connection: when its listen queue is full, the kernel drops the client's
 * final ACK and the connection is accepted only after a SYN-ACK retransmit
 * (1 s, 3 s, ... later). Without the ping, such a connection would count as
 * ready and its first measured request would take seconds.
 */
static void got_token(struct conn *c)
{
    send_request(c, R_PING);
}

/* Another connection of this user should log in: the one that did died. */
static void hand_over_auth(int user)
{
    users[user].auth = AUTH_NONE;
    for (int i = 0; i < opt.conns; i++) {
        if (conns[i].user == user && conns[i].state == C_WAIT_TOKEN) {
            users[user].auth = AUTH_PENDING;
            send_request(&conns[i], R_AUTH);
            return;
        }
    }
}

/* The connection is unusable from now on. */
static void kill_conn(struct conn *c, const char *why)
{
    enum conn_state was = c->state;
    close_fd(c);
    set_state(c, C_DEAD);
    n_dead++;
    if (phase == PH_SETUP && !is_settled(was))
        setup_failures++;
    else
        disconnects++;
    if (disconnects + setup_failures <= 5)
        note("connection %ld lost (%s)", (long)(c - conns), why);
    if (was == C_AUTHING)
        hand_over_auth(c->user);
}

static void connect_failed(struct conn *c, int err)
{
    close_fd(c);
    n_connecting--;
    c->retries++;
    connect_retries++;
    if (c->retries > CONNECT_RETRIES) {
        note("connection %ld: giving up connecting: %s",
             (long)(c - conns), strerror(err));
        set_state(c, C_DEAD);
        n_dead++;
        setup_failures++;
        return;
    }
    /* Exponential backoff from 10 ms, capped at 1 s. */
    uint64_t delay = 10000000ull << (c->retries < 7 ? c->retries : 7);
    if (delay > 1000000000ull)
        delay = 1000000000ull;
    c->retry_at = now_ns() + delay;
    set_state(c, C_BACKOFF);
}

static void start_connect(struct conn *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket: %s (is RLIMIT_NOFILE high enough?)", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    n_connecting++;
    set_state(c, C_CONNECTING);
    const struct sockaddr_in *addr = &server_addrs[c->target];
    if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) < 0
        && errno != EINPROGRESS) {
        /* EAGAIN / EADDRNOTAVAIL (no local port), ECONNREFUSED: retry. */
        connect_failed(c, errno);
        return;
    }
    /* Completion (or failure) is reported as writability. */
    epoll_set(c, EPOLL_CTL_ADD, EPOLLOUT);
    c->want_out = 1;
}

static void connected(struct conn *c)
{
    n_connecting--;
    epoll_set(c, EPOLL_CTL_MOD, EPOLLIN);
    c->want_out = 0;
    struct user *u = &users[c->user];
    if (u->auth == AUTH_DONE) {
        got_token(c);
    } else if (u->auth == AUTH_NONE) {
        u->auth = AUTH_PENDING;
        send_request(c, R_AUTH);
    } else {
        set_state(c, C_WAIT_TOKEN);
    }
}

/* ------------------------------------------------------------------ */
/* Requests and replies.                                               */
/* ------------------------------------------------------------------ */

static void flush_out(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
                         MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                if (!c->want_out) {
                    epoll_set(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
                    c->want_out = 1;
                }
                return;
            }
            kill_conn(c, strerror(errno));
            return;
        }
        bytes_out += (uint64_t)n;
        c->out_off += (size_t)n;
    }
    c->out_len = c->out_off = 0;
    if (c->want_out) {
        epoll_set(c, EPOLL_CTL_MOD, EPOLLIN);
        c->want_out = 0;
    }
}

static void send_request(struct conn *c, enum req_kind kind)
{
    struct user *u = &users[c->user];
    int len;
    switch (kind) {
    case R_AUTH:
        len = snprintf(scratch, sizeof scratch, "auth %s %s\n", u->name,
                       opt.password);
        set_state(c, C_AUTHING);
        break;
    case R_PING:
        len = snprintf(scratch, sizeof scratch, "ping %ld\n", (long)(c - conns));
        set_state(c, C_BUSY);
        break;
    case R_INBOX:
        len = snprintf(scratch, sizeof scratch, "inbox %s\n", u->token);
        set_state(c, C_BUSY);
        break;
    case R_SEND:
    default:
        len = snprintf(scratch, sizeof scratch, "send %s %s %s\n", u->token,
                       users[u->recipient].name, message_text);
        set_state(c, C_BUSY);
        break;
    }
    if (len < 0 || (size_t)len >= sizeof scratch)
        die("request too long");
    c->req = kind;
    c->seq++;
    c->sent_at = now_ns();
    /* Write straight from scratch; keep a copy only of what did not fit. */
    ssize_t n = send(c->fd, scratch, (size_t)len, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR) {
            kill_conn(c, strerror(errno));
            return;
        }
        n = 0;
    }
    bytes_out += (uint64_t)n;
    if (n < len) {
        size_t rest = (size_t)(len - n);
        if (c->out_cap < rest) {
            c->out = xrealloc(c->out, rest);
            c->out_cap = rest;
        }
        memcpy(c->out, scratch + n, rest);
        c->out_len = rest;
        c->out_off = 0;
        flush_out(c);
    }
}

/* The next request of the closed loop on c. */
static void next_request(struct conn *c)
{
    if (opt.inbox_every > 0 && (c->seq + 1) % (uint64_t)opt.inbox_every == 0)
        send_request(c, R_INBOX);
    else
        send_request(c, R_SEND);
}

static int is_error_reply(const char *r, size_t len)
{
    return memmem(r, len, "\"status\":\"ERROR\"", 16) != NULL
        || memmem(r, len, "\"status\": \"ERROR\"", 17) != NULL;
}

static void show_error(struct conn *c, const char *what, const char *r, size_t len)
{
    if (errors_shown++ < 5)
        fprintf(stderr, "loadgen: connection %ld: %s: %.*s\n",
                (long)(c - conns), what, (int)(len > 300 ? 300 : len), r);
}

/* One complete reply (without its delimiter) arrived on c. */
static void handle_reply(struct conn *c, const char *r, size_t len)
{
    uint64_t now = now_ns();
    enum req_kind kind = c->req;
    c->req = R_NONE;

    if (kind == R_NONE) {
        unexpected++;
        show_error(c, "reply without a request", r, len);
        return;
    }
    if (kind == R_AUTH) {
        struct user *u = &users[c->user];
        const char *key = "\"tokenid\":\"";
        const char *p = memmem(r, len, key, strlen(key));
        const char *end = p ? memchr(p + strlen(key), '"',
                                     len - (size_t)(p + strlen(key) - r)) : NULL;
        if (is_error_reply(r, len) || p == NULL || end == NULL
            || (size_t)(end - p - strlen(key)) >= sizeof u->token)
            die("auth %s failed: %.*s", u->name, (int)len, r);
        size_t tlen = (size_t)(end - p - strlen(key));
        memcpy(u->token, p + strlen(key), tlen);
        u->token[tlen] = '\0';
        u->auth = AUTH_DONE;
        got_token(c);
        /* Wake the user's other connections. */
        for (int i = 0; i < opt.conns; i++)
            if (conns[i].user == c->user && conns[i].state == C_WAIT_TOKEN)
                got_token(&conns[i]);
        return;
    }
    if (kind == R_PING) {
        if (is_error_reply(r, len) || memmem(r, len, "PONG", 4) == NULL) {
            show_error(c, "bad ping reply", r, len);
            kill_conn(c, "bad ping reply");
            return;
        }
        set_state(c, opt.idle ? C_IDLE : C_READY);
        return;
    }

    /* A send or inbox of the closed loop. */
    if (phase == PH_LOAD && now >= t_warm_end && now < t_end) {
        reqs++;
        if (kind == R_SEND)
            reqs_send++;
        else
            reqs_inbox++;
        uint64_t us = (now - c->sent_at) / 1000;
        iv_reqs++;
        if (us > iv_max_us)
            iv_max_us = us;
        if (is_error_reply(r, len)) {
            errors++;
            iv_errors++;
            show_error(c, "error reply", r, len);
        }
        hist_record(us);
    }
    if (phase == PH_LOAD)
        next_request(c);
}

static void on_readable(struct conn *c)
{
    ssize_t n = recv(c->fd, scratch, sizeof scratch, 0);
    if (n == 0) {
        kill_conn(c, "closed by server");
        return;
    }
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            kill_conn(c, strerror(errno));
        return;
    }
    bytes_in += (uint64_t)n;
    if (c->in_len + (size_t)n > c->in_cap) {
        size_t cap = c->in_cap ? c->in_cap : 1024;
        while (cap < c->in_len + (size_t)n)
            cap *= 2;
        if (cap > MAX_IN_BUFFER) {
            kill_conn(c, "reply too large");
            return;
        }
        c->in = xrealloc(c->in, cap);
        c->in_cap = cap;
    }
    /* Search for the delimiter only in the new bytes (and the 3 before). */
    size_t from = c->in_len > DELIM_LEN - 1 ? c->in_len - (DELIM_LEN - 1) : 0;
    memcpy(c->in + c->in_len, scratch, (size_t)n);
    c->in_len += (size_t)n;
    for (;;) {
        char *d = memmem(c->in + from, c->in_len - from, DELIM, DELIM_LEN);
        if (d == NULL)
            break;
        size_t reply_len = (size_t)(d - c->in);
        handle_reply(c, c->in, reply_len);
        if (c->fd < 0)
            return;  /* handle_reply killed it */
        size_t used = reply_len + DELIM_LEN;
        memmove(c->in, c->in + used, c->in_len - used);
        c->in_len -= used;
        from = 0;
    }
}

static void on_event(struct conn *c, uint32_t ev)
{
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err != 0)
            connect_failed(c, err);
        else if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            connected(c);
        return;
    }
    if (c->fd < 0)
        return;
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))
        on_readable(c);
    if (c->fd >= 0 && (ev & EPOLLOUT))
        flush_out(c);
}

/* ------------------------------------------------------------------ */
/* Setup helpers.                                                      */
/* ------------------------------------------------------------------ */

static void raise_nofile(int need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        die("getrlimit: %s", strerror(errno));
    if (rl.rlim_cur >= (rlim_t)need)
        return;
    if (rl.rlim_max < (rlim_t)need)
        rl.rlim_max = (rlim_t)need;  /* only works as root */
    rl.rlim_cur = (rlim_t)need;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
        getrlimit(RLIMIT_NOFILE, &rl);
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        die("need %d file descriptors but RLIMIT_NOFILE allows %llu; "
            "raise the hard limit (ulimit -Hn)", need,
            (unsigned long long)rl.rlim_max);
    }
}

static void parse_users(void)
{
    const char *arg = opt.users_arg ? opt.users_arg : "messi,henderson,lineker";
    char *copy = strdup(arg);
    if (copy == NULL)
        die("out of memory");
    int cap = 8;
    users = calloc((size_t)cap, sizeof *users);
    for (char *save = NULL, *tok = strtok_r(copy, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        if (*tok == '\0')
            continue;
        if (n_users == cap) {
            cap *= 2;
            users = xrealloc(users, (size_t)cap * sizeof *users);
        }
        memset(&users[n_users], 0, sizeof *users);
        users[n_users].name = tok;
        n_users++;
    }
    if (n_users == 0)
        die("--users: no user given");
    for (int i = 0; i < n_users; i++)
        users[i].recipient = (i + 1) % n_users;
}

/* The send text: printable, no whitespace, exactly msg_size bytes. */
static void make_message(void)
{
    message_text = malloc((size_t)opt.msg_size + 1);
    if (message_text == NULL)
        die("out of memory");
    for (int i = 0; i < opt.msg_size; i++)
        message_text[i] = (char)('a' + i % 26);
    message_text[opt.msg_size] = '\0';
}

static void usage(FILE *f)
{
    fprintf(f,
        "usage: loadgen --port P[,P...] [options]\n"
        "  --host H             server address (IPv4, default 127.0.0.1)\n"
        "  --port P             server port (required); repeat it or give a\n"
        "                       comma-separated list to spread the connections\n"
        "                       round-robin over several servers\n"
        "  --conns N            connections (default 1)\n"
        "  --users a,b,c        users, assigned to connections round-robin\n"
        "                       (default messi,henderson,lineker)\n"
        "  --password PW        password of every user (default surabaya)\n"
        "closed loop (default):\n"
        "  --duration S         measured seconds (default 10)\n"
        "  --warmup W           unmeasured seconds before (default 1)\n"
        "  --msg-size B         bytes of text per send (default 40)\n"
        "  --inbox-every K      every K-th request is an inbox (default 10, 0: never)\n"
        "idle:\n"
        "  --idle               open, authenticate, ping once, then hold\n"
        "  --hold S             seconds to hold the idle connections (default 10)\n"
        "both:\n"
        "  --setup-timeout S    most seconds to connect and log in (default 60)\n"
        "  --connect-parallel K most connects in flight at once (default 128)\n"
        "  --interval S         closed loop: print req/s and max latency every\n"
        "                       S seconds of the measured phase on stderr\n"
        "  --quiet              no progress notes on stderr\n");
}

static double parse_double(const char *s, const char *name)
{
    char *end;
    double v = strtod(s, &end);
    if (*s == '\0' || *end != '\0' || v < 0)
        die("%s: not a non-negative number: %s", name, s);
    return v;
}

static int parse_int(const char *s, const char *name, int min)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < min || v > 10000000)
        die("%s: expected an integer >= %d: %s", name, min, s);
    return (int)v;
}

/* One --port value: a port, or several separated by commas. */
static void parse_ports(const char *arg)
{
    char *copy = strdup(arg);
    if (copy == NULL)
        die("out of memory");
    for (char *save = NULL, *tok = strtok_r(copy, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        if (opt.n_ports == MAX_PORTS)
            die("--port: at most %d ports", MAX_PORTS);
        opt.ports[opt.n_ports++] = parse_int(tok, "--port", 1);
    }
    free(copy);
}

static void parse_args(int argc, char **argv)
{
    enum { O_HOST = 1000, O_PORT, O_CONNS, O_DURATION, O_WARMUP, O_USERS,
           O_PASSWORD, O_MSG_SIZE, O_IDLE, O_HOLD, O_SETUP, O_PARALLEL,
           O_INBOX, O_INTERVAL, O_QUIET, O_HELP };
    static const struct option longopts[] = {
        { "host", required_argument, NULL, O_HOST },
        { "port", required_argument, NULL, O_PORT },
        { "conns", required_argument, NULL, O_CONNS },
        { "duration", required_argument, NULL, O_DURATION },
        { "warmup", required_argument, NULL, O_WARMUP },
        { "users", required_argument, NULL, O_USERS },
        { "password", required_argument, NULL, O_PASSWORD },
        { "msg-size", required_argument, NULL, O_MSG_SIZE },
        { "idle", no_argument, NULL, O_IDLE },
        { "hold", required_argument, NULL, O_HOLD },
        { "setup-timeout", required_argument, NULL, O_SETUP },
        { "connect-parallel", required_argument, NULL, O_PARALLEL },
        { "inbox-every", required_argument, NULL, O_INBOX },
        { "interval", required_argument, NULL, O_INTERVAL },
        { "quiet", no_argument, NULL, O_QUIET },
        { "help", no_argument, NULL, O_HELP },
        { NULL, 0, NULL, 0 },
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case O_HOST: opt.host = optarg; break;
        case O_PORT: parse_ports(optarg); break;
        case O_CONNS: opt.conns = parse_int(optarg, "--conns", 1); break;
        case O_DURATION: opt.duration = parse_double(optarg, "--duration"); break;
        case O_WARMUP: opt.warmup = parse_double(optarg, "--warmup"); break;
        case O_USERS: opt.users_arg = optarg; break;
        case O_PASSWORD: opt.password = optarg; break;
        case O_MSG_SIZE: opt.msg_size = parse_int(optarg, "--msg-size", 1); break;
        case O_IDLE: opt.idle = 1; break;
        case O_HOLD: opt.hold = parse_double(optarg, "--hold"); break;
        case O_SETUP: opt.setup_timeout = parse_double(optarg, "--setup-timeout"); break;
        case O_PARALLEL:
            opt.connect_parallel = parse_int(optarg, "--connect-parallel", 1);
            break;
        case O_INBOX: opt.inbox_every = parse_int(optarg, "--inbox-every", 0); break;
        case O_INTERVAL: opt.interval = parse_double(optarg, "--interval"); break;
        case O_QUIET: opt.quiet = 1; break;
        case O_HELP: usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind < argc) {
        usage(stderr);
        exit(2);
    }
    if (opt.n_ports == 0) {
        usage(stderr);
        die("--port is required");
    }
    if (opt.msg_size > 16000)
        die("--msg-size: at most 16000");
    if (opt.duration <= 0 && !opt.idle)
        die("--duration must be positive");
}

/* User + system CPU seconds between two getrusage snapshots. */
static double cpu_seconds(const struct rusage *a, const struct rusage *b)
{
    double ua = (double)a->ru_utime.tv_sec + (double)a->ru_utime.tv_usec / 1e6;
    double sa = (double)a->ru_stime.tv_sec + (double)a->ru_stime.tv_usec / 1e6;
    double ub = (double)b->ru_utime.tv_sec + (double)b->ru_utime.tv_usec / 1e6;
    double sb = (double)b->ru_stime.tv_sec + (double)b->ru_stime.tv_usec / 1e6;
    return (ub + sb) - (ua + sa);
}

/* ------------------------------------------------------------------ */
/* Main loop.                                                          */
/* ------------------------------------------------------------------ */

/* Start connects that are due, keeping at most connect_parallel in flight. */
static void pump_connects(uint64_t now, int *next_new)
{
    while (n_connecting < opt.connect_parallel && *next_new < opt.conns)
        start_connect(&conns[(*next_new)++]);
    if (n_backoff == 0)
        return;
    for (int i = 0; i < opt.conns && n_connecting < opt.connect_parallel; i++)
        if (conns[i].state == C_BACKOFF && conns[i].retry_at <= now)
            start_connect(&conns[i]);
}

/* Setup is over: close the connections that are not ready by now. */
static void give_up_unsettled(void)
{
    int gave_up = 0;
    for (int i = 0; i < opt.conns; i++) {
        struct conn *c = &conns[i];
        if (!is_settled(c->state) && c->state != C_DEAD) {
            if (c->state == C_CONNECTING)
                n_connecting--;
            close_fd(c);
            set_state(c, C_DEAD);
            n_dead++;
            setup_failures++;
            gave_up++;
        }
    }
    if (gave_up)
        note("setup timed out: gave up on %d connection(s)", gave_up);
}

/* Setup is over (all settled, or out of time): begin the next phase. */
static void end_setup(uint64_t now)
{
    give_up_unsettled();
    note("setup done in %.2f s: %d of %d connections ready (%" PRIu64
         " connect retries)", (double)(now - t_start) / 1e9, n_settled,
         opt.conns, connect_retries);
    getrusage(RUSAGE_SELF, &ru_load_start);
    t_load = now;
    n_established = n_settled;
    if (opt.idle) {
        phase = PH_HOLD;
        t_end = now + secs_ns(opt.hold);
        /* run.py waits for this line before it measures the server. */
        printf("HOLD %d\n", n_settled);
        fflush(stdout);
        return;
    }
    phase = PH_LOAD;
    t_warm_end = now + secs_ns(opt.warmup);
    t_end = t_warm_end + secs_ns(opt.duration);
    iv_next = t_warm_end + secs_ns(opt.interval);
    /* run.py reads the server's CPU time between this line and DONE. */
    printf("LOAD %d\n", n_settled);
    fflush(stdout);
    for (int i = 0; i < opt.conns; i++)
        if (conns[i].state == C_READY)
            next_request(&conns[i]);
}

static void report(void)
{
    struct rusage ru_end;
    getrusage(RUSAGE_SELF, &ru_end);
    uint64_t now = now_ns();
    double phase_wall = (double)(now - t_load) / 1e9;
    double cpu = cpu_seconds(&ru_load_start, &ru_end);
    double cpu_total = cpu_seconds(&(struct rusage){ 0 }, &ru_end);
    double cpu_pct = phase_wall > 0 ? 100.0 * cpu / phase_wall : 0.0;
    double setup_s = (double)(t_load - t_start) / 1e9;
    int alive = 0;
    for (int i = 0; i < opt.conns; i++)
        if (conns[i].state != C_DEAD)
            alive++;

    if (opt.idle) {
        printf("idle: %d of %d connections established, authenticated and "
               "pinged (setup %.2f s), %d still open after holding %.1f s, "
               "%" PRIu64 " lost while held\n",
               n_established, opt.conns, setup_s, alive, opt.hold, disconnects);
        printf("loadgen cpu: %.3f s user+sys while holding (%.1f%% of one core), "
               "%.3f s in all\n", cpu, cpu_pct, cpu_total);
        printf("{\"mode\":\"idle\",\"ports\":%d,\"conns\":%d,\"established\":%d,\"alive\":%d,"
               "\"setup_failures\":%" PRIu64 ",\"disconnects\":%" PRIu64 ","
               "\"setup_s\":%.3f,\"hold_s\":%.3f,\"connect_retries\":%" PRIu64 ","
               "\"lg_cpu_s\":%.3f,\"lg_cpu_pct\":%.1f,\"lg_cpu_total_s\":%.3f}\n",
               opt.n_ports, opt.conns, n_established, alive, setup_failures,
               disconnects,
               setup_s, opt.hold, connect_retries, cpu, cpu_pct, cpu_total);
        return;
    }

    double rps = (double)reqs / opt.duration;
    double p50 = hist_quantile_ms(0.50), p90 = hist_quantile_ms(0.90);
    double p99 = hist_quantile_ms(0.99), pmax = (double)hist_max_us / 1000.0;
    printf("closed loop: %d connections (%d ready, %d users), %.1f s warmup + "
           "%.1f s measured\n", opt.conns, n_established,
           n_users, opt.warmup, opt.duration);
    printf("requests: %" PRIu64 " (%" PRIu64 " send, %" PRIu64 " inbox), "
           "%.1f req/s, %" PRIu64 " error replies, %" PRIu64 " disconnects, "
           "%" PRIu64 " setup failures\n", reqs, reqs_send, reqs_inbox, rps,
           errors, disconnects, setup_failures);
    printf("latency ms: p50 %.3f  p90 %.3f  p99 %.3f  max %.3f\n",
           p50, p90, p99, pmax);
    printf("loadgen cpu: %.3f s user+sys over %.2f s of load (%.1f%% of one "
           "core), %.3f s in all\n", cpu, phase_wall, cpu_pct, cpu_total);
    printf("{\"mode\":\"closed\",\"ports\":%d,\"conns\":%d,\"ready\":%d,\"users\":%d,"
           "\"duration_s\":%.3f,\"warmup_s\":%.3f,\"reqs\":%" PRIu64 ","
           "\"sends\":%" PRIu64 ",\"inboxes\":%" PRIu64 ",\"rps\":%.1f,"
           "\"errors\":%" PRIu64 ",\"unexpected\":%" PRIu64 ","
           "\"disconnects\":%" PRIu64 ",\"setup_failures\":%" PRIu64 ","
           "\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,"
           "\"setup_s\":%.3f,\"connect_retries\":%" PRIu64 ","
           "\"bytes_in\":%" PRIu64 ",\"bytes_out\":%" PRIu64 ","
           "\"lg_cpu_s\":%.3f,\"lg_cpu_pct\":%.1f,\"lg_cpu_total_s\":%.3f}\n",
           opt.n_ports, opt.conns, n_established, n_users, opt.duration,
           opt.warmup, reqs, reqs_send, reqs_inbox, rps, errors, unexpected,
           disconnects, setup_failures, p50, p90, p99, pmax, setup_s,
           connect_retries, bytes_in, bytes_out, cpu, cpu_pct, cpu_total);
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    parse_users();
    make_message();
    signal(SIGPIPE, SIG_IGN);
    raise_nofile(opt.conns + 64);

    for (int p = 0; p < opt.n_ports; p++) {
        struct sockaddr_in *addr = &server_addrs[p];
        memset(addr, 0, sizeof *addr);
        addr->sin_family = AF_INET;
        addr->sin_port = htons((uint16_t)opt.ports[p]);
        if (inet_pton(AF_INET, opt.host, &addr->sin_addr) != 1)
            die("--host: not an IPv4 address: %s", opt.host);
    }

    conns = calloc((size_t)opt.conns, sizeof *conns);
    if (conns == NULL)
        die("out of memory");
    for (int i = 0; i < opt.conns; i++) {
        conns[i].fd = -1;
        conns[i].user = i % n_users;
        conns[i].target = i % opt.n_ports;
        conns[i].state = C_NEW;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1: %s", strerror(errno));

    struct epoll_event events[MAX_EVENTS];
    int next_new = 0;
    t_start = now_ns();
    uint64_t setup_deadline = t_start + secs_ns(opt.setup_timeout);

    while (phase != PH_DONE) {
        uint64_t now = now_ns();
        int timeout_ms = 50;
        if (phase == PH_SETUP) {
            if (n_settled + n_dead == opt.conns || now >= setup_deadline) {
                if (n_settled == 0) {
                    give_up_unsettled();
                    t_load = now;
                    getrusage(RUSAGE_SELF, &ru_load_start);
                    report();
                    die("no connection could be set up");
                }
                end_setup(now);
                continue;
            }
            pump_connects(now, &next_new);
            if (n_backoff > 0)
                timeout_ms = 10;
        } else if (now >= t_end) {
            phase = PH_DONE;
            if (!opt.idle) {
                printf("DONE\n");
                fflush(stdout);
            }
            break;
        } else {
            if (phase == PH_LOAD && !opt.idle && !measure_printed &&
                now >= t_warm_end) {
                /* run.py reads the server's CPU time between this line and
                   DONE: the measured phase only. */
                measure_printed = 1;
                printf("MEASURE\n");
                fflush(stdout);
            }
            if (phase == PH_LOAD && opt.interval > 0 && now >= iv_next) {
                fprintf(stderr, "loadgen: t=%.1fs %.0f req/s, %" PRIu64
                        " errors, max %.1f ms\n",
                        (double)(now - t_warm_end) / 1e9,
                        (double)iv_reqs / opt.interval, iv_errors,
                        (double)iv_max_us / 1000.0);
                iv_reqs = iv_errors = iv_max_us = 0;
                iv_next += secs_ns(opt.interval);
            }
            uint64_t left_ms = (t_end - now) / 1000000ull + 1;
            if (left_ms < (uint64_t)timeout_ms)
                timeout_ms = (int)left_ms;
        }
        int n = epoll_wait(epfd, events, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait: %s", strerror(errno));
        }
        for (int i = 0; i < n; i++)
            on_event(events[i].data.ptr, events[i].events);
    }

    report();
    for (int i = 0; i < opt.conns; i++)
        close_fd(&conns[i]);
    return 0;
}

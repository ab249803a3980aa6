/* SINGLE mode's request count for memcached, in C: where a run of ordinary requests ends.
 *
 * Why C: profiling SINGLE mode under memcslap (loadtests/reports/profile.md, "memcached") put
 * about 7 us of the proxy's 17 us of user time per request in framing: the request reader
 * building a Request per request (split, token checks, a slice of its data block), and the reply
 * reader building a Reply per reply. SINGLE mode only needs to know where whole requests end, so
 * that it never leaves half a request on the server; its replies go unframed (the codec's
 * sentinel says where they end when it must know). This walks each line once and builds nothing.
 *
 * scan(data, max_line, max_key, max_value) -> (end, count, need, values, 0, 0, 0, reads)
 *
 * ``end`` is where the longest prefix of ``data`` made of complete *ordinary* requests ends and
 * ``count`` how many it holds. Ordinary means a request of the commands below in the form the
 * exact parser (requests.py) frames the same way and lets through as it is: tokens separated by
 * single spaces, every byte of a token above 0x20, a line of at most ``max_line`` bytes ending in
 * "\n" with at most one "\r" before it, a token count within the command's bounds, keys of at
 * most ``max_key`` bytes, and for the commands with a data block (set add replace append prepend
 * cas ms) the numbers memcached reads with it in plain decimal digits, a size of at most
 * ``max_value`` and the block followed by "\r\n". Anything else (another command, an odd spacing,
 * an over-size value the proxy answers itself) ends the prefix: the exact parser frames it.
 *
 * ``need`` says what follows the prefix: -1 something the exact parser must frame now; 0 nothing,
 * or the start of a line whose end has not come (and that cannot be over ``max_line`` yet);
 * n > 0 an ordinary request of n bytes whose line is whole and whose data block has not all come.
 * In the last two cases the exact parser would only hold those bytes, as the caller then does.
 *
 * scan(data, max_line, max_key, max_value, runs=0)
 *     -> (end, count, need, values, silent, last, expiring, reads):
 * with ``runs`` true, the MVE engine's count of a run (MemcacheRequestReader.count_run), which
 * takes fewer requests: only those whose replies frame without the request (one line, or VALUE
 * blocks then END), that get exactly one or, with a last "noreply", none at all (memcached's
 * noreply silences errors too), and that reach the follower as they came but for their expiry:
 * get and gat, the text storage commands, incr and decr, touch, and delete of one key alone,
 * those but get and gat with or without "noreply". No gets or gats (their CAS tokens are each
 * server's own), no meta command (quiet modes hide replies). ``values`` is how many of the
 * ``count`` requests are get or gat (the others' replies are small whatever the data: the engine
 * may send them on the shared connection at once), ``reads`` how many are get (they change
 * nothing; gat sets a time to live); ``silent`` how many say noreply, and ``last`` whether the
 * last of them does (the engine knows such a run ran only once a later reply comes);
 * ``expiring`` how many set an expiry in seconds from now (a store, touch, gat), which the
 * follower gets as the leader's moment (``absolute``, below). Without ``runs``, ``silent``,
 * ``last`` and ``expiring`` are 0.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "../../relay/_io.h"

#define MAX_TOKENS 24 /* the name and 23 arguments; a longer line goes to the exact parser */

enum { PLAIN, STORE, CAS, META_SET };
enum { KEYS_NONE, KEY_FIRST, KEYS_ALL, KEYS_AFTER_FIRST };

typedef struct {
    const char *name;
    int len;
    int form;
    int min_args, max_args; /* tokens after the name */
    int keys;
    int run_args; /* in a run: the exact count of tokens after the name, -1 any, 0 never */
    int expiry;   /* the token that is an expiry (the name is token 0), or 0 */
    int values;   /* its reply is VALUE blocks, then END */
} command;

#define RELATIVE_MAX (60 * 60 * 24 * 30) /* memcached's REALTIME_MAXDELTA: larger is a unix time */

/* The commands SINGLE mode forwards without a look (commands.py has their reply shapes). */
static const command COMMANDS[] = {
    {"get", 3, PLAIN, 1, MAX_TOKENS - 1, KEYS_ALL, -1, 0, 1},
    {"gets", 4, PLAIN, 1, MAX_TOKENS - 1, KEYS_ALL, 0, 0, 1},
    {"gat", 3, PLAIN, 1, MAX_TOKENS - 1, KEYS_AFTER_FIRST, -1, 1, 1},
    {"gats", 4, PLAIN, 1, MAX_TOKENS - 1, KEYS_AFTER_FIRST, 0, 1, 1},
    {"set", 3, STORE, 4, 5, KEY_FIRST, 4, 3, 0},
    {"add", 3, STORE, 4, 5, KEY_FIRST, 4, 3, 0},
    {"replace", 7, STORE, 4, 5, KEY_FIRST, 4, 3, 0},
    {"append", 6, STORE, 4, 5, KEY_FIRST, 4, 3, 0},
    {"prepend", 7, STORE, 4, 5, KEY_FIRST, 4, 3, 0},
    {"cas", 3, CAS, 5, 6, KEY_FIRST, 0, 3, 0},
    {"incr", 4, PLAIN, 2, 3, KEY_FIRST, 2, 0, 0},
    {"decr", 4, PLAIN, 2, 3, KEY_FIRST, 2, 0, 0},
    {"touch", 5, PLAIN, 2, 3, KEY_FIRST, 2, 2, 0},
    {"delete", 6, PLAIN, 1, 3, KEY_FIRST, 1, 0, 0},
    {"mg", 2, PLAIN, 1, MAX_TOKENS - 1, KEY_FIRST, 0, 0, 0},
    {"md", 2, PLAIN, 1, MAX_TOKENS - 1, KEY_FIRST, 0, 0, 0},
    {"ma", 2, PLAIN, 1, MAX_TOKENS - 1, KEY_FIRST, 0, 0, 0},
    {"me", 2, PLAIN, 1, MAX_TOKENS - 1, KEY_FIRST, 0, 0, 0},
    {"ms", 2, META_SET, 2, 18, KEY_FIRST, 0, 0, 0},
    {"mn", 2, PLAIN, 0, MAX_TOKENS - 1, KEYS_NONE, 0, 0, 0},
    {"version", 7, PLAIN, 0, MAX_TOKENS - 1, KEYS_NONE, 0, 0, 0},
};
#define N_COMMANDS (sizeof(COMMANDS) / sizeof(COMMANDS[0]))

static const command *
find(const unsigned char *name, Py_ssize_t len)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (COMMANDS[i].len == len && memcmp(COMMANDS[i].name, name, (size_t)len) == 0)
            return &COMMANDS[i];
    return NULL;
}

/* Whether the token is 1 to ``most`` decimal digits; its value in *value. */
static int
digits(const unsigned char *t, Py_ssize_t len, Py_ssize_t most, long long *value)
{
    if (len < 1 || len > most)
        return 0;
    long long v = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        if (t[i] < '0' || t[i] > '9')
            return 0;
        v = v * 10 + (t[i] - '0');
    }
    *value = v;
    return 1;
}

/* The tokens of the line data[start:stop] into tok and tlen: single spaces between them, every
 * byte above 0x20. Their count, or 0 when the line is not in that form or has more than
 * MAX_TOKENS. */
static int
split_line(const unsigned char *data, Py_ssize_t start, Py_ssize_t stop,
           const unsigned char **tok, Py_ssize_t *tlen)
{
    int ntok = 0;
    Py_ssize_t from = start;
    for (Py_ssize_t i = start; i <= stop; i++) {
        if (i == stop || data[i] == ' ') {
            if (i == from || ntok == MAX_TOKENS)
                return 0;
            tok[ntok] = data + from;
            tlen[ntok] = i - from;
            ntok++;
            from = i + 1;
        } else if (data[i] <= 0x20) {
            return 0;
        }
    }
    return ntok;
}

/* Whether a storage command's expiry token is in seconds from now (memcached reads 1 to
 * RELATIVE_MAX so); its value in *seconds. (0 is never; larger, a unix time.) */
static int
relative(const unsigned char *t, Py_ssize_t len, long long *seconds)
{
    return digits(t, len, 18, seconds) && *seconds > 0 && *seconds <= RELATIVE_MAX;
}

/* What scan_data found: scan's result, in its order. */
typedef struct {
    Py_ssize_t end, count, need, values, silent, last, expiring, reads;
} counted;
#define N_COUNTED 8

/* The scan itself (see the top of this file); touches no Python object. */
static void
scan_data(const unsigned char *data, Py_ssize_t n, Py_ssize_t max_line, Py_ssize_t max_key,
          Py_ssize_t max_value, int runs, counted *out)
{
    Py_ssize_t end = 0, count = 0, need = 0, values = 0, silent = 0, last_silent = 0;
    Py_ssize_t expiring = 0, reads = 0;
    const unsigned char *tok[MAX_TOKENS];
    Py_ssize_t tlen[MAX_TOKENS];

    while (end < n) {
        const unsigned char *nlp = memchr(data + end, '\n', (size_t)(n - end));
        if (nlp == NULL) {
            need = (n - end <= max_line) ? 0 : -1;
            break;
        }
        Py_ssize_t nl = nlp - data;
        Py_ssize_t stop = (nl > end && data[nl - 1] == '\r') ? nl - 1 : nl;
        need = -1;
        if (stop - end > max_line || stop == end)
            break;
        int ntok = split_line(data, end, stop, tok, tlen);
        if (ntok == 0)
            break;
        int ok = 1;
        const command *cmd = find(tok[0], tlen[0]);
        int nargs = ntok - 1;
        if (cmd == NULL || nargs < cmd->min_args || nargs > cmd->max_args)
            break;
        int quiet = nargs > 0 && tlen[ntok - 1] == 7 && memcmp(tok[ntok - 1], "noreply", 7) == 0;
        /* A last "noreply" only after the run's exact count of tokens: "incr k noreply" (a
         * noreply where the number should be, which memcached 1.6 answers with nothing, not
         * even its error) and "get noreply" (a get of that key) take the exact path. */
        if (runs && (cmd->run_args == 0 || (cmd->run_args < 0 ? quiet
                                                               : nargs - quiet != cmd->run_args)))
            break;
        int first = cmd->keys == KEYS_ALL ? 1 : cmd->keys == KEYS_AFTER_FIRST ? 2 : 1;
        int last = cmd->keys == KEYS_NONE ? 0 : cmd->keys == KEY_FIRST ? 1 : ntok - 1;
        for (int k = first; k <= last; k++)
            if (tlen[k] > max_key) {
                ok = 0;
                break;
            }
        if (!ok)
            break;
        Py_ssize_t next = nl + 1;
        if (cmd->form != PLAIN) {
            long long size, unused;
            if (cmd->form == META_SET) {
                ok = digits(tok[2], tlen[2], 9, &size);
            } else {
                /* flags, exptime, size (and the CAS unique): as the exact parser's fast path
                 * reads them, or in the only form its exact reading gives the same numbers. */
                ok = digits(tok[2], tlen[2], 9, &unused) && digits(tok[3], tlen[3], 18, &unused)
                     && digits(tok[4], tlen[4], 9, &size);
                if (ok && cmd->form == CAS)
                    ok = digits(tok[5], tlen[5], 19, &unused);
            }
            if (!ok || size > max_value)
                break;
            next = nl + 3 + (Py_ssize_t)size;
            if (next > n) {
                need = next - end;
                break;
            }
            if (data[next - 2] != '\r' || data[next - 1] != '\n')
                break;
        }
        end = next;
        count++;
        values += cmd->values; /* (get and gat: gets and gats are not in a run) */
        reads += cmd->values && !cmd->expiry;
        last_silent = runs && quiet;
        silent += last_silent;
        long long seconds;
        expiring += runs && cmd->expiry && relative(tok[cmd->expiry], tlen[cmd->expiry], &seconds);
        need = 0;
    }
    out->end = end;
    out->count = count;
    out->need = need;
    out->values = values;
    out->silent = silent;
    out->last = last_silent;
    out->expiring = expiring;
    out->reads = reads;
}

/* The arguments after the first of a METH_FASTCALL function, as sizes: 0, or -1 with an
 * exception set. (The tuple of arguments and PyArg_ParseTuple's format were a third of a run's
 * scan and most of a walk over one reply, per call: loadtests/reports/matrix.md.) */
static int
sizes(const char *usage, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t least,
      Py_ssize_t most, Py_ssize_t *out)
{
    if (nargs < least || nargs > most) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    for (Py_ssize_t i = 1; i < nargs; i++)
        if ((out[i - 1] = PyLong_AsSsize_t(args[i])) == -1 && PyErr_Occurred())
            return -1;
    return 0;
}

/* (a, b, ...) of n sizes, or NULL with an exception set. */
static PyObject *
size_tuple(Py_ssize_t n, const Py_ssize_t *values)
{
    PyObject *tuple = PyTuple_New(n);
    for (Py_ssize_t i = 0; tuple != NULL && i < n; i++) {
        PyObject *item = PyLong_FromSsize_t(values[i]);
        if (item == NULL)
            Py_CLEAR(tuple);
        else
            PyTuple_SET_ITEM(tuple, i, item);
    }
    return tuple;
}

static PyObject *
scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t a[4] = {0, 0, 0, 0};
    counted got;
    if (sizes("scan(data, max_line, max_key, max_value, runs=0)", args, nargs, 4, 5, a) < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    scan_data(view.buf, view.len, a[0], a[1], a[2], a[3] != 0, &got);
    PyBuffer_Release(&view);
    Py_ssize_t values[N_COUNTED] = {got.end,    got.count, got.need,     got.values,
                                    got.silent, got.last,  got.expiring, got.reads};
    return size_tuple(N_COUNTED, values);
}

/* forward(reader, src_fd, dst_fd, buffer) -> None | (received, sent)
 *
 * MemcacheRequestReader.forward: when the reader holds nothing (no request begun, none framed
 * and not taken, no error, not after quit, no data block being skipped, its first read seen:
 * the checks of its count), one read of a client's src_fd into buffer, sent on to its server's
 * dst_fd when it is nothing but complete ordinary requests (scan's end is all of it, with the
 * reader's _scan_limits); else sent is IO_HELD and the read is left in buffer for the exact
 * parser. A read sent on (or deferred: dst_fd -1) moves the reader's _base past it. None,
 * having read nothing, when the reader holds something. See relay/_io.h for the codes. The same
 * function, as a pointer (FORWARD, a capsule: the reader class's c_forward), serves
 * relay/_pump.c's batch without a call through Python. */
static PyObject *s_chunks, *s_ready, *s_failure, *s_error, *s_quit, *s_skip, *s_started,
    *s_scan_limits, *s_base;

/* 1 with the reader's scan limits in bounds when it holds nothing, 0 when it holds something,
 * -1 on an error. */
static int
holds_nothing(PyObject *reader, Py_ssize_t *bounds)
{
    int t;
    if ((t = io_true_at(reader, s_chunks)) != 0 || (t = io_true_at(reader, s_ready)) != 0)
        return t < 0 ? -1 : 0;
    if ((t = io_none_at(reader, s_failure)) != 1 || (t = io_none_at(reader, s_error)) != 1)
        return t;
    if ((t = io_true_at(reader, s_quit)) != 0 || (t = io_true_at(reader, s_skip)) != 0)
        return t < 0 ? -1 : 0;
    if ((t = io_true_at(reader, s_started)) != 1)
        return t;
    PyObject *limits = PyObject_GetAttr(reader, s_scan_limits);
    if (limits == NULL)
        return -1;
    int r = 1;
    if (!PyTuple_Check(limits) || PyTuple_GET_SIZE(limits) != 3) {
        PyErr_SetString(PyExc_TypeError, "forward: the reader's _scan_limits is not 3 sizes");
        r = -1;
    }
    for (Py_ssize_t i = 0; r == 1 && i < 3; i++)
        if ((bounds[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(limits, i))) == -1
                && PyErr_Occurred())
            r = -1;
    Py_DECREF(limits);
    return r;
}

static int
forward_read(PyObject *reader, int src, int dst, char *buf, Py_ssize_t size,
             Py_ssize_t *received_out, Py_ssize_t *sent_out)
{
    Py_ssize_t bounds[3], received, sent = IO_HELD;
    counted got;
    int ready = holds_nothing(reader, bounds);
    if (ready != 1)
        return ready;
    Py_BEGIN_ALLOW_THREADS
    received = io_recv(src, buf, size);
    if (received > 0) {
        scan_data((const unsigned char *)buf, received, bounds[0], bounds[1], bounds[2], 0, &got);
        if (got.end == received)
            sent = io_send(dst, buf, received);
    }
    Py_END_ALLOW_THREADS
    if (received > 0 && sent != IO_HELD && io_add_at(reader, s_base, received) < 0)
        return -1;
    *received_out = received;
    *sent_out = sent;
    return 1;
}

static PyObject *
forward(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return io_forward_call(forward_read, args, nargs);
}

/* replies(data, pos, limit, max_line, max_value) -> (count, end, error): the MVE engine's walk
 * over the replies on an update's shared connection (memcache/shared.py, SharedReplies.take),
 * from the reply boundary at ``pos``: up to ``limit`` complete replies in their common forms,
 * building nothing. ``end`` is where the last one ends; ``error`` whether one was an error line
 * (ERROR, CLIENT_ERROR, SERVER_ERROR, alone or ending VALUE blocks).
 *
 * The common forms: lines of at most ``max_line`` bytes ending in "\r\n"; a reply is one such
 * line not starting "VALUE ", or VALUE lines of exactly 4 or 5 tokens (single spaces; flags and
 * CAS unique of 1 to 19 digits, size of 1 to 9 digits and at most ``max_value``) each followed
 * by its data block and "\r\n", ended by END or an error line. The walk stops before anything
 * else (a bare "\n", a reply not all here, a malformed VALUE line): the Python framer frames,
 * or refuses, what follows. */
static int
is_error_line(const unsigned char *line, Py_ssize_t len)
{
    static const char *const codes[] = {"ERROR", "CLIENT_ERROR", "SERVER_ERROR"};
    for (int i = 0; i < 3; i++) {
        Py_ssize_t n = (Py_ssize_t)strlen(codes[i]);
        if (len >= n && memcmp(line, codes[i], (size_t)n) == 0 && (len == n || line[n] == ' '))
            return 1;
    }
    return 0;
}

/* The line at pos: its length without "\r\n" (-1: not a whole common line). */
static Py_ssize_t
common_line(const unsigned char *data, Py_ssize_t n, Py_ssize_t pos, Py_ssize_t max_line)
{
    const unsigned char *nlp = memchr(data + pos, '\n', (size_t)(n - pos));
    if (nlp == NULL)
        return -1;
    Py_ssize_t nl = nlp - data;
    if (nl == pos || data[nl - 1] != '\r' || nl - 1 - pos > max_line)
        return -1;
    return nl - 1 - pos;
}

static PyObject *
replies(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t a[4], count = 0;
    int error = 0;
    if (sizes("replies(data, pos, limit, max_line, max_value)", args, nargs, 5, 5, a) < 0)
        return NULL;
    Py_ssize_t pos = a[0], limit = a[1], max_line = a[2], max_value = a[3];
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *data = view.buf;
    Py_ssize_t n = view.len;
    while (count < limit && pos >= 0 && pos < n) {
        Py_ssize_t len = common_line(data, n, pos, max_line);
        if (len < 0)
            break;
        const unsigned char *line = data + pos;
        if (!(len >= 6 && memcmp(line, "VALUE ", 6) == 0)) {
            error |= is_error_line(line, len);
            pos += len + 2;
            count++;
            continue;
        }
        /* VALUE blocks, then END or an error line. */
        Py_ssize_t at = pos;
        int done = 0, failed = 0;
        for (;;) {
            len = common_line(data, n, at, max_line);
            if (len < 0)
                break;
            line = data + at;
            if ((len == 3 && memcmp(line, "END", 3) == 0) || is_error_line(line, len)) {
                failed = len != 3 || memcmp(line, "END", 3) != 0;
                at += len + 2;
                done = 1;
                break;
            }
            const unsigned char *tok[6];
            Py_ssize_t tlen[6];
            int ntok = 0, ok = 1;
            Py_ssize_t start = 0;
            for (Py_ssize_t i = 0; i <= len; i++) {
                if (i == len || line[i] == ' ') {
                    if (i == start || ntok == 6) {
                        ok = 0;
                        break;
                    }
                    tok[ntok] = line + start;
                    tlen[ntok] = i - start;
                    ntok++;
                    start = i + 1;
                } else if (line[i] <= 0x20) {
                    ok = 0;
                    break;
                }
            }
            long long flags, size, unique;
            if (!ok || (ntok != 4 && ntok != 5) || tlen[0] != 5 || memcmp(tok[0], "VALUE", 5) != 0
                || !digits(tok[2], tlen[2], 19, &flags) || !digits(tok[3], tlen[3], 9, &size)
                || size > max_value || (ntok == 5 && !digits(tok[4], tlen[4], 19, &unique)))
                break;
            Py_ssize_t stop = at + len + 2 + (Py_ssize_t)size + 2;
            if (stop > n || data[stop - 2] != '\r' || data[stop - 1] != '\n')
                break;
            at = stop;
        }
        if (!done)
            break;
        error |= failed;
        pos = at;
        count++;
    }
    PyBuffer_Release(&view);
    PyObject *got = PyLong_FromSsize_t(count), *end = got ? PyLong_FromSsize_t(pos) : NULL;
    PyObject *result = end ? PyTuple_Pack(3, got, end, error ? Py_True : Py_False) : NULL;
    Py_XDECREF(got);
    Py_XDECREF(end);
    return result;
}

/* absolute(run, moment) -> bytes: a run's bytes for the follower, each expiry in seconds from
 * now (a storage command's, touch's, gat's) made the unix time ``moment`` + it, as expiry.py's
 * absolute_expiry makes it request by request (the follower runs a request later than the
 * leader, by seconds: with its own "now" the item would expire later there). The rest goes as
 * it came. ``run`` is what scan took as a run; anything else raises ValueError. */
static PyObject *
absolute(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t a[1];
    if (sizes("absolute(run, moment)", args, nargs, 2, 2, a) < 0)
        return NULL;
    long long moment = a[0];
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *data = view.buf;
    Py_ssize_t n = view.len, pos = 0, at = 0;
    /* A request is at least 8 bytes ("get k\r\n") and its expiry grows by at most 13 digits. */
    PyObject *out = PyBytes_FromStringAndSize(NULL, n + 2 * n + 32);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    const unsigned char *tok[MAX_TOKENS];
    Py_ssize_t tlen[MAX_TOKENS];
    while (pos < n) {
        const unsigned char *nlp = memchr(data + pos, '\n', (size_t)(n - pos));
        if (nlp == NULL)
            break;
        Py_ssize_t nl = nlp - data;
        Py_ssize_t stop = (nl > pos && data[nl - 1] == '\r') ? nl - 1 : nl;
        int ntok = split_line(data, pos, stop, tok, tlen);
        const command *cmd = ntok ? find(tok[0], tlen[0]) : NULL;
        if (cmd == NULL)
            break;
        Py_ssize_t next = nl + 1;
        long long size, seconds;
        if (cmd->form == STORE) {
            if (ntok < 5 || !digits(tok[4], tlen[4], 9, &size) || nl + 3 + size > n)
                break;
            next = nl + 3 + (Py_ssize_t)size;
        }
        int e = cmd->expiry;
        if (e && e < ntok && relative(tok[e], tlen[e], &seconds)) {
            Py_ssize_t head = tok[e] - data;
            memcpy(o + at, data + pos, (size_t)(head - pos));
            at += head - pos;
            at += sprintf((char *)o + at, "%lld", moment + seconds);
            pos = head + tlen[e];
        }
        memcpy(o + at, data + pos, (size_t)(next - pos));
        at += next - pos;
        pos = next;
    }
    PyBuffer_Release(&view);
    if (pos != n) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_ValueError, "absolute: not a run of whole requests");
        return NULL;
    }
    if (_PyBytes_Resize(&out, at) < 0)
        return NULL;
    return out;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(data, max_line, max_key, max_value, runs=0) -> (end, count, need, values, silent, "
     "last, expiring, reads): the "
     "complete ordinary memcached requests at the start of data, or those of an MVE run (see "
     "the module's source)."},
    {"absolute", (PyCFunction)(void (*)(void))absolute, METH_FASTCALL,
     "absolute(run, moment) -> bytes: a run's bytes for the follower, its expiries in seconds "
     "from now made unix times from moment (see the module's source)."},
    {"replies", (PyCFunction)(void (*)(void))replies, METH_FASTCALL,
     "replies(data, pos, limit, max_line, max_value) -> (count, end, error): complete replies "
     "on an update's shared connection, in their common forms (see the module's source)."},
    {"forward", (PyCFunction)(void (*)(void))forward, METH_FASTCALL,
     "forward(reader, src_fd, dst_fd, buffer) -> None | (received, sent): one read, sent on "
     "when it is only complete ordinary requests (see the module's source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_scan",
    "Where a run of ordinary memcached requests ends, in C (SINGLE mode's count).", -1, methods,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    IO_INTERN(s_chunks, "_chunks");
    IO_INTERN(s_ready, "_ready");
    IO_INTERN(s_failure, "_failure");
    IO_INTERN(s_error, "_error");
    IO_INTERN(s_quit, "_quit");
    IO_INTERN(s_skip, "_skip");
    IO_INTERN(s_started, "_started");
    IO_INTERN(s_scan_limits, "_scan_limits");
    IO_INTERN(s_base, "_base");
    return io_module_with_forward(&module, forward_read);
}

/* SINGLE mode's request count for Redis, in C: where a run of canonical requests ends; the
 * exact parser's loop over the elements of a request that has many (elements(), below); and
 * the MVE engine's walk over a run of replies (replies(), below).
 *
 * Why C: profiling SINGLE mode under redis-benchmark -P 16 (loadtests/reports/profile.md) put
 * about three quarters of the proxy's user time in counting a client's pipelined requests in
 * Python (the hiredis proof in fast.py: a parse that builds every argument, then whole-chunk
 * checks that prove the framing canonical). This walks the headers once, builds nothing but
 * the set of command names, and costs about a microsecond for a 16-request read.
 *
 * scan(data) -> (end, count, names)
 *
 * ``end`` is where the longest prefix of ``data`` made of complete canonical requests ends,
 * ``count`` how many requests it holds and ``names`` the set of their command names as sent
 * (None when count is 0). Canonical means what fast.py proves and redis-server frames the same
 * way: "*<n>\r\n" with 1 <= n, then n times "$<len>\r\n", len bytes, "\r\n", each number in
 * its only spelling (decimal digits, no sign, no leading zero). The first byte that does not
 * continue such a request ends the prefix; what follows it is the caller's to frame.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <string.h>

#include "../../relay/_io.h"

/* A header's number at data[*pos] up to "\r\n": its value, or -1 (also when incomplete).
 * ``zero``: whether 0 is allowed. At most 10 digits: nothing larger fits in a chunk. */
static long long
number(const unsigned char *data, Py_ssize_t n, Py_ssize_t *pos, int zero)
{
    Py_ssize_t i = *pos;
    long long value = 0;
    Py_ssize_t start = i;
    while (i < n && data[i] >= '0' && data[i] <= '9') {
        if (i - start >= 10)
            return -1;
        value = value * 10 + (data[i] - '0');
        i++;
    }
    if (i == start || (data[start] == '0' && (i - start > 1 || !zero)))
        return -1;
    if (i + 1 >= n || data[i] != '\r' || data[i + 1] != '\n')
        return -1;
    *pos = i + 2;
    return value;
}

/* The complete canonical request at data[at:] (see the top of this file): where it ends, its
 * command name at *name (*name_len bytes); or -1 when there is none there (incomplete, or not
 * canonical). */
static Py_ssize_t
request_at(const unsigned char *data, Py_ssize_t n, Py_ssize_t at, const unsigned char **name,
           Py_ssize_t *name_len)
{
    if (at >= n || data[at] != '*')
        return -1;
    Py_ssize_t pos = at + 1;
    long long argc = number(data, n, &pos, 0);
    if (argc < 1)
        return -1;
    for (long long i = 0; i < argc; i++) {
        if (pos >= n || data[pos] != '$')
            return -1;
        pos++;
        long long len = number(data, n, &pos, 1);
        if (len < 0 || len > n - pos - 2)
            return -1;
        if (data[pos + len] != '\r' || data[pos + len + 1] != '\n')
            return -1;
        if (i == 0) {
            *name = data + pos;
            *name_len = (Py_ssize_t)len;
        }
        pos += (Py_ssize_t)len + 2;
    }
    return pos;
}

/* The scan itself (see the top of this file): sets *end_out and *count_out, and returns the
 * new set of names (a new reference), or Py_None (new reference) when count is 0, or NULL
 * with an exception set. */
static PyObject *
scan_data(const unsigned char *data, Py_ssize_t n, Py_ssize_t *end_out, Py_ssize_t *count_out)
{
    Py_ssize_t end = 0, count = 0, next;
    const unsigned char *last_name = NULL, *name = NULL;
    Py_ssize_t last_len = -1, name_len = 0;
    PyObject *names = NULL;

    while ((next = request_at(data, n, end, &name, &name_len)) >= 0) {
        if (name_len != last_len || memcmp(name, last_name, name_len) != 0) {
            if (names == NULL && (names = PySet_New(NULL)) == NULL)
                goto error;
            PyObject *item = PyBytes_FromStringAndSize((const char *)name, name_len);
            if (item == NULL || PySet_Add(names, item) < 0) {
                Py_XDECREF(item);
                goto error;
            }
            Py_DECREF(item);
            last_name = name;
            last_len = name_len;
        }
        end = next;
        count++;
    }
    *end_out = end;
    *count_out = count;
    if (names == NULL)
        Py_RETURN_NONE;
    return names;

error:
    Py_XDECREF(names);
    return NULL;
}

static PyObject *
scan(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    Py_ssize_t end, count;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *names = scan_data(view.buf, view.len, &end, &count);
    PyBuffer_Release(&view);
    if (names == NULL)
        return NULL;
    return Py_BuildValue("nnN", end, count, names);
}

/* forward(reader, src_fd, dst_fd, buffer) -> None | (received, sent)
 *
 * RespRequestReader.forward: when the reader holds nothing (no request in progress, nothing
 * buffered or held back, not broken, its fast path allowed), one read of a client's src_fd into
 * buffer, sent on to its server's dst_fd when it is nothing but complete canonical requests
 * whose names are all in the sets ``ordinary`` and ``not_holding`` (names.py's caches of
 * names count() has seen to be ordinary and no script: given once, to bind()); else sent is
 * IO_HELD and the read is left in buffer for Python, which frames it (and learns the names it
 * had not seen). A read sent on (or deferred: dst_fd -1) moves the reader's stream offset past
 * it. None, having read nothing, when the reader holds something (or bind() was not called).
 * See relay/_io.h for the codes. The same function, as a pointer (FORWARD, a capsule: the
 * reader class's c_forward), serves relay/_pump.c's batch without a call through Python. */

static PyObject *ordinary_names, *not_holding_names;  /* bind() */
static PyObject *s_args, *s_held, *s_pos, *s_buf, *s_error, *s_fast, *s_offset;

/* Names found in both sets lately, so that a read of them allocates nothing: their bytes are
 * compared, and the sets asked again with the cached object (its hash kept), so the answer is
 * always the sets' own. */
#define KNOWN_NAMES 8
static PyObject *known_names[KNOWN_NAMES];
static int known_next;

/* 1 when name is in both sets, 0 when not, -1 on an error. */
static int
name_known(const unsigned char *name, Py_ssize_t len)
{
    PyObject *item = NULL;
    for (int i = 0; i < KNOWN_NAMES && known_names[i] != NULL; i++) {
        if (PyBytes_GET_SIZE(known_names[i]) == len
                && memcmp(PyBytes_AS_STRING(known_names[i]), name, (size_t)len) == 0) {
            item = Py_NewRef(known_names[i]);
            break;
        }
    }
    int cached = item != NULL;
    if (item == NULL && (item = PyBytes_FromStringAndSize((const char *)name, len)) == NULL)
        return -1;
    int ok = PySet_Contains(ordinary_names, item);
    if (ok == 1)
        ok = PySet_Contains(not_holding_names, item);
    if (ok == 1 && !cached) {
        Py_XSETREF(known_names[known_next], item);
        known_next = (known_next + 1) % KNOWN_NAMES;
        return 1;
    }
    Py_DECREF(item);
    return ok;
}

/* A transaction's bounds, any case: MULTI opens it, EXEC or DISCARD ends it. */
enum { NOT_BOUND, OPENS, ENDS };

static int
bound(const unsigned char *name, Py_ssize_t len)
{
    static const char *const names[] = {"MULTI", "EXEC", "DISCARD"};
    for (int i = 0; i < 3; i++) {
        Py_ssize_t size = (Py_ssize_t)strlen(names[i]);
        int same = len == size;
        for (Py_ssize_t j = 0; same && j < len; j++)
            same = (name[j] & ~0x20) == names[i][j];
        if (same)
            return i == 0 ? OPENS : ENDS;
    }
    return NOT_BOUND;
}

/* Whether the transaction state after a request named ``name`` follows from ``*open`` (a
 * MULTI not ended yet): a MULTI only outside one, an EXEC or DISCARD only inside; 0 when not,
 * 1 and *open updated when it does (any other name: as it was; *bounded says which). */
static int
bounds_follow(const unsigned char *name, Py_ssize_t len, int *open, int *bounded)
{
    int kind = bound(name, len);
    *bounded = kind != NOT_BOUND;
    if (kind == OPENS ? *open : kind == ENDS ? !*open : 0)
        return 0;
    if (kind != NOT_BOUND)
        *open = kind == OPENS;
    return 1;
}

/* 1 when data[:n] is nothing but complete canonical requests whose names are known (see
 * name_known), or whole transactions of them (MULTI, those, then EXEC or DISCARD: redis-py's
 * default pipeline, one write; no MULTI left open at the end), 0 when not, -1 on an error. A
 * whole transaction changes no state of the connection's that SINGLE mode records, and EXEC
 * runs only known requests, none of which holds the server. */
static int
known_requests(const unsigned char *data, Py_ssize_t n)
{
    Py_ssize_t end = 0;
    const unsigned char *last_name = NULL, *name = NULL;
    Py_ssize_t last_len = -1, name_len = 0;
    int open = 0, bounded;
    while (end < n) {
        end = request_at(data, n, end, &name, &name_len);
        if (end < 0)
            return 0;
        /* (the name of the request before, known: no bound, nothing to ask again) */
        if (name_len != last_len || memcmp(name, last_name, name_len) != 0) {
            if (!bounds_follow(name, name_len, &open, &bounded))
                return 0;
            if (bounded)
                continue;
            int known = name_known(name, name_len);
            if (known != 1)
                return known;
            last_name = name;
            last_len = name_len;
        }
    }
    return !open;
}

/* whole_transactions(data, end) -> bool: whether the canonical requests of data[:end] (scan's
 * prefix) open and end their transactions as known_requests allows (count() asks it of a read
 * whose names are ordinary but for MULTI, EXEC and DISCARD). */
static PyObject *
whole_transactions(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t a[1];
    if (nargs != 2 || (a[0] = PyLong_AsSsize_t(args[1])) == -1) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "whole_transactions(data, end)");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *data = view.buf, *name = NULL;
    Py_ssize_t n = a[0] < view.len ? a[0] : view.len, pos = 0, name_len = 0;
    int open = 0, bounded, ok = 1;
    while (ok && pos < n) {
        pos = request_at(data, n, pos, &name, &name_len);
        ok = pos >= 0 && bounds_follow(name, name_len, &open, &bounded);
    }
    PyBuffer_Release(&view);
    return PyBool_FromLong(ok && !open);
}

/* Whether the reader holds nothing (the Python forward's checks, in its order): 1, 0, -1. */
static int
holds_nothing(PyObject *reader)
{
    int t = io_none_at(reader, s_args);
    if (t != 1)
        return t;
    if ((t = io_true_at(reader, s_held)) != 0)
        return t < 0 ? -1 : 0;
    PyObject *pos = PyObject_GetAttr(reader, s_pos);
    PyObject *buf = pos ? PyObject_GetAttr(reader, s_buf) : NULL;
    Py_ssize_t size = buf ? PyObject_Length(buf) : -1;
    Py_XDECREF(buf);
    if (size < 0) {
        Py_XDECREF(pos);
        return -1;
    }
    PyObject *end = PyLong_FromSsize_t(size);
    t = end ? PyObject_RichCompareBool(pos, end, Py_LT) : -1;
    Py_DECREF(pos);
    Py_XDECREF(end);
    if (t != 0)
        return t < 0 ? -1 : 0;
    if ((t = io_none_at(reader, s_error)) != 1)
        return t;
    return io_true_at(reader, s_fast);
}

static int
forward_read(PyObject *reader, int src, int dst, char *buf, Py_ssize_t size,
             Py_ssize_t *received_out, Py_ssize_t *sent_out)
{
    if (ordinary_names == NULL)
        return 0;
    int ready = holds_nothing(reader);
    if (ready != 1)
        return ready;
    Py_ssize_t received, sent = IO_HELD;
    Py_BEGIN_ALLOW_THREADS
    received = io_recv(src, buf, size);
    Py_END_ALLOW_THREADS
    if (received > 0 && buf[0] == '*') {
        int ok = known_requests((const unsigned char *)buf, received);
        if (ok < 0)
            return -1;
        if (ok) {
            if (dst < 0) {
                sent = IO_DEFERRED;
            } else {
                Py_BEGIN_ALLOW_THREADS
                sent = io_send(dst, buf, received);
                Py_END_ALLOW_THREADS
            }
        }
    }
    if (received > 0 && sent != IO_HELD && io_add_at(reader, s_offset, received) < 0)
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

/* bind(ordinary, not_holding): the sets forward checks names against (names.py's). */
static PyObject *
bind_names(PyObject *self, PyObject *args)
{
    PyObject *ordinary, *not_holding;
    if (!PyArg_ParseTuple(args, "O!O!", &PySet_Type, &ordinary, &PySet_Type, &not_holding))
        return NULL;
    Py_XSETREF(ordinary_names, Py_NewRef(ordinary));
    Py_XSETREF(not_holding_names, Py_NewRef(not_holding));
    Py_RETURN_NONE;
}

/* elements(data, pos, left, max_bulk) -> (pos, values)
 *
 * The exact parser's loop over a request's elements, for a request of many (RPUSH of a million
 * values): from ``pos``, at an element's "$", up to ``left`` complete canonical elements, each
 * "$<len>\r\n", len bytes, "\r\n" with len <= max_bulk; ``values`` their bytes and ``pos``
 * where the first element not taken starts. It stops at the first element that is incomplete or
 * anything else; the Python parser takes that one (a wait, an error, a value passing through, a
 * value not followed by CRLF, which redis-server does not check), then calls this again. */
static PyObject *
elements(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos, left, max_bulk;
    if (!PyArg_ParseTuple(args, "y*nnn", &view, &pos, &left, &max_bulk))
        return NULL;
    const unsigned char *data = view.buf;
    Py_ssize_t n = view.len;
    PyObject *values = PyList_New(0);
    if (values == NULL)
        goto error;
    while (left > 0 && pos < n && data[pos] == '$') {
        Py_ssize_t at = pos + 1;
        long long len = number(data, n, &at, 1);
        if (len < 0 || len > max_bulk || len > n - at - 2)
            break;
        if (data[at + len] != '\r' || data[at + len + 1] != '\n')
            break;
        PyObject *value = PyBytes_FromStringAndSize((const char *)data + at, (Py_ssize_t)len);
        if (value == NULL || PyList_Append(values, value) < 0) {
            Py_XDECREF(value);
            goto error;
        }
        Py_DECREF(value);
        pos = at + (Py_ssize_t)len + 2;
        left--;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("nN", pos, values);

error:
    Py_XDECREF(values);
    PyBuffer_Release(&view);
    return NULL;
}


/* replies(data, pos, limit, max_bulk, max_line, max_depth, max_elements)
 *     -> (count, end, error)
 *
 * The MVE engine's way through a run of replies on a shared connection (RespReplyParser.take):
 * from ``pos``, at a reply boundary, up to ``limit`` complete replies of the kinds a plain
 * client's ordinary requests get, without building anything: ``count`` of them end at ``end``;
 * ``error`` says whether one was an error reply ("-..."). Accepted, each exactly as the exact
 * parser (replies.py) frames it: status "+", error "-" and integer ":" lines (the line's CRLF
 * within max_line + 3 bytes of its start, as the parser looks for it; an integer in its only
 * spelling, at most 18 digits), bulks "$<len>" (len 0 to max_bulk in its only spelling, or -1,
 * its data followed by CRLF), and arrays "*<n>" of those (n -1 to max_elements, nested at most
 * max_depth deep). The first reply that is anything else, incomplete, or wrong ends the walk at
 * its start: the exact parser takes it from there (it waits, raises, or builds a RESP3 type). */

/* Where the CRLF of the line starting at ``pos`` is, looked for as the parser does
 * (buf.find(b"\r\n", pos, pos + window)), or -1. */
static Py_ssize_t
line_end(const unsigned char *data, Py_ssize_t n, Py_ssize_t pos, Py_ssize_t window)
{
    Py_ssize_t stop = pos + window;
    if (stop > n)
        stop = n;
    for (Py_ssize_t i = pos; i + 1 < stop; i++) {
        if (data[i] == '\r' && data[i + 1] == '\n')
            return i;
    }
    return -1;
}

/* A number spelled as redis-server spells it, data[start:end]: its value, or -2 when it is not
 * one this walk takes (``minus_one``: -1 allowed; ``digits``: at most that many). */
static long long
spelled(const unsigned char *data, Py_ssize_t start, Py_ssize_t end, int minus_one, int digits,
        int negative)
{
    Py_ssize_t len = end - start;
    if (len == 2 && minus_one && data[start] == '-' && data[start + 1] == '1')
        return -1;
    int sign = 0;
    if (negative && len > 1 && data[start] == '-') {
        sign = 1;
        start++;
        len--;
    }
    if (len < 1 || len > digits)
        return -2;
    if (data[start] == '0' && (len > 1 || sign))
        return -2; /* a leading zero, or -0 */
    long long value = 0;
    for (Py_ssize_t i = start; i < end; i++) {
        if (data[i] < '0' || data[i] > '9')
            return -2;
        value = value * 10 + (data[i] - '0');
    }
    return sign ? -value : value;
}

#define MAX_WALK_DEPTH 64

static PyObject *
replies(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos, limit, max_bulk, max_line, max_depth, max_elements;
    if (!PyArg_ParseTuple(args, "y*nnnnnn", &view, &pos, &limit, &max_bulk, &max_line,
                          &max_depth, &max_elements))
        return NULL;
    const unsigned char *data = view.buf;
    Py_ssize_t n = view.len;
    Py_ssize_t count = 0, window = max_line + 3;
    int error = 0;
    long long left[MAX_WALK_DEPTH]; /* elements still to come in each open array */
    if (max_depth > MAX_WALK_DEPTH)
        max_depth = MAX_WALK_DEPTH;

    while (count < limit && pos < n) {
        Py_ssize_t at = pos;
        int depth = 0, top_error = 0, ok = 1;
        do { /* one element; loops while arrays are open */
            if (at >= n) {
                ok = 0;
                break;
            }
            unsigned char t = data[at];
            Py_ssize_t nl = line_end(data, n, at, window);
            if (nl < 0) {
                ok = 0;
                break;
            }
            if (t == '+' || t == '-') {
                if (t == '-' && depth == 0)
                    top_error = 1;
                at = nl + 2;
            } else if (t == ':') {
                if (spelled(data, at + 1, nl, 0, 18, 1) == -2) {
                    ok = 0;
                    break;
                }
                at = nl + 2;
            } else if (t == '$') {
                long long len = spelled(data, at + 1, nl, 1, 10, 0);
                if (len == -2 || len > max_bulk) {
                    ok = 0;
                    break;
                }
                at = nl + 2;
                if (len >= 0) {
                    if (len > n - at - 2 || data[at + len] != '\r' || data[at + len + 1] != '\n') {
                        ok = 0;
                        break;
                    }
                    at += (Py_ssize_t)len + 2;
                }
            } else if (t == '*') {
                long long items = spelled(data, at + 1, nl, 1, 10, 0);
                if (items == -2 || items > max_elements) {
                    ok = 0;
                    break;
                }
                at = nl + 2;
                if (items > 0) {
                    if (depth >= max_depth) {
                        ok = 0;
                        break;
                    }
                    left[depth++] = items;
                    continue; /* its first element */
                }
            } else {
                ok = 0;
                break;
            }
            /* an element ended: close the arrays it completes */
            while (depth > 0 && --left[depth - 1] == 0)
                depth--;
        } while (depth > 0);
        if (!ok)
            break;
        pos = at;
        count++;
        error |= top_error;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("nnO", count, pos, error ? Py_True : Py_False);
}

/* absolute(run, at_ms) -> bytes: a run's bytes for the follower, each relative expiry made the
 * moment the leader ran it: the follower runs it later, by seconds under load, and would keep
 * the key that much longer (a cache's SET k v EX 300, a session's SETEX or EXPIRE). The words
 * are those effects.py's absolute_expiry gives a request alone: SET's and GETEX's first EX or
 * PX (after SET's value, GETEX's key) made "PXAT at_ms + it"; EXPIRE and PEXPIRE made PEXPIREAT;
 * SETEX and PSETEX made SET ... PXAT. The rest goes as it came. ``run`` is what scan took
 * (canonical requests); anything else raises ValueError. A request whose time is not an integer
 * goes as it came (the leader refused it, so the run never reaches the follower as a run). */
enum { PLAIN_NAME, SET_NAME, GETEX_NAME, EXPIRE_NAME, PEXPIRE_NAME, SETEX_NAME, PSETEX_NAME };

static int
name_is(const unsigned char *word, Py_ssize_t len, const char *name)
{
    if ((size_t)len != strlen(name))
        return 0;
    for (Py_ssize_t i = 0; i < len; i++)
        if ((word[i] & ~0x20) != name[i])  /* (upper case: names are letters) */
            return 0;
    return 1;
}

static int
expiring_kind(const unsigned char *word, Py_ssize_t len)
{
    static const char *const names[] = {"SET", "GETEX", "EXPIRE", "PEXPIRE", "SETEX", "PSETEX"};
    for (int i = 0; i < 6; i++)
        if (name_is(word, len, names[i]))
            return SET_NAME + i;
    return PLAIN_NAME;
}

static int
expiry_word(const unsigned char *word, Py_ssize_t len, long long *unit)
{
    if (len != 2 || (word[1] | 0x20) != 'x')
        return 0;
    int first = word[0] | 0x20;
    *unit = first == 'e' ? 1000 : 1;
    return first == 'e' || first == 'p';
}

static int
integer_word(const unsigned char *word, Py_ssize_t len, long long *value)
{
    Py_ssize_t i = len > 0 && word[0] == '-';
    if (len - i < 1 || len - i > 15)
        return 0;
    long long v = 0;
    for (; i < len; i++) {
        if (word[i] < '0' || word[i] > '9')
            return 0;
        v = v * 10 + (word[i] - '0');
    }
    *value = word[0] == '-' ? -v : v;
    return 1;
}

static Py_ssize_t
put(char *o, Py_ssize_t at, const unsigned char *from, Py_ssize_t size)
{
    memcpy(o + at, from, (size_t)size);
    return at + size;
}

static PyObject *
absolute(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "absolute(run, at_ms)");
        return NULL;
    }
    long long at_ms = PyLong_AsLongLong(args[1]);
    if (at_ms == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *data = view.buf;
    Py_ssize_t n = view.len, pos = 0, at = 0;
    /* A request is at least 14 bytes; a rewrite adds at most 40. */
    PyObject *out = PyBytes_FromStringAndSize(NULL, 4 * n + 64);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    char *o = PyBytes_AS_STRING(out);
    int ok = 1;
    while (ok && pos < n) {
        /* The request's elements: where the first four begin and end, and for SET and GETEX
         * where the first EX or PX and the number after it begin and end (cut, resume). */
        Py_ssize_t start = pos, heads[4] = {0}, ends[4] = {0}, cut = -1, resume = -1;
        long long argc = -1, unit = 0, amount = 0;
        if (data[pos] == '*') {
            pos++;
            argc = number(data, n, &pos, 0);
        }
        int kind = PLAIN_NAME, looked = 0;
        for (long long k = 0; ok && k < argc; k++) {
            Py_ssize_t head = pos;
            long long len = pos < n && data[pos] == '$' ? (pos++, number(data, n, &pos, 1)) : -1;
            if (len < 0 || pos + len + 2 > n) {
                ok = 0;
                break;
            }
            const unsigned char *word = data + pos;
            pos += len + 2;
            if (k < 4) {
                heads[k] = head;
                ends[k] = pos;
            }
            if (k == 0)
                kind = expiring_kind(word, len);
            else if ((kind == SET_NAME ? k >= 3 : kind == GETEX_NAME && k >= 2) && k + 1 < argc
                     && !looked && expiry_word(word, len, &unit)) {
                looked = 1;  /* the first EX or PX decides, as in effects.py */
                Py_ssize_t next = pos;
                long long size = next < n && data[next] == '$' ? (next++, number(data, n, &next, 1))
                                                                : -1;
                if (size >= 0 && next + size + 2 <= n
                        && integer_word(data + next, size, &amount)) {
                    cut = head;
                    resume = pos = next + size + 2;
                    k++;
                }
            }
        }
        if (argc < 1)
            ok = 0;
        if (!ok)
            break;
        /* EXPIRE's and SETEX's time (the third element), in milliseconds, if it has one
         * (any integer: PEXPIRE k -1 is made PEXPIREAT of the moment before, as effects.py
         * makes it; both delete the key). */
        long long ms = 0;
        int timed = 0;
        if (kind >= EXPIRE_NAME && argc >= 3 && (kind < SETEX_NAME || argc == 4)) {
            Py_ssize_t p = heads[2] + 1;
            long long size = number(data, n, &p, 1);
            if (size >= 0 && integer_word(data + p, size, &amount)) {
                ms = amount * (kind == EXPIRE_NAME || kind == SETEX_NAME ? 1000 : 1);
                timed = 1;
            }
        }
        char digits[24];
        if (timed || cut >= 0) {
            int d = snprintf(digits, sizeof digits, "%lld", at_ms + (cut >= 0 ? amount * unit : ms));
            char header[16];
            int h = snprintf(header, sizeof header, "$%d\r\n", d);
            if (cut >= 0) {  /* SET, GETEX: ... PXAT <ms> ... */
                at = put(o, at, data + start, cut - start);
                at = put(o, at, (const unsigned char *)"$4\r\nPXAT\r\n", 10);
            } else if (kind < SETEX_NAME) {  /* EXPIRE k n ...: PEXPIREAT k <ms> ... */
                at = put(o, at, data + start, heads[0] - start);
                at = put(o, at, (const unsigned char *)"$9\r\nPEXPIREAT\r\n", 15);
                at = put(o, at, data + heads[1], ends[1] - heads[1]);
                resume = ends[2];
            } else {  /* SETEX k n v: SET k v PXAT <ms> */
                at = put(o, at, (const unsigned char *)"*5\r\n$3\r\nSET\r\n", 13);
                at = put(o, at, data + heads[1], ends[1] - heads[1]);
                at = put(o, at, data + heads[3], ends[3] - heads[3]);
                at = put(o, at, (const unsigned char *)"$4\r\nPXAT\r\n", 10);
                resume = pos;
            }
            at = put(o, at, (const unsigned char *)header, h);
            at = put(o, at, (const unsigned char *)digits, d);
            at = put(o, at, (const unsigned char *)"\r\n", 2);
            at = put(o, at, data + resume, pos - resume);
            continue;
        }
        at = put(o, at, data + start, pos - start);
    }
    PyBuffer_Release(&view);
    if (!ok) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_ValueError, "absolute: not a run of canonical requests");
        return NULL;
    }
    if (_PyBytes_Resize(&out, at) < 0)
        return NULL;
    return out;
}

static PyMethodDef methods[] = {
    {"whole_transactions", (PyCFunction)(void (*)(void))whole_transactions, METH_FASTCALL,
     "whole_transactions(data, end) -> bool: whether data[:end]'s requests open and end their "
     "transactions in order, none left open (see the module's source)."},
    {"absolute", (PyCFunction)(void (*)(void))absolute, METH_FASTCALL,
     "absolute(run, at_ms) -> bytes: a run's bytes for the follower, each SET's EX or PX made "
     "PXAT from at_ms (see the module's source)."},
    {"scan", scan, METH_O,
     "scan(data) -> (end, count, names): the complete canonical Redis requests at the start "
     "of data (see the module's source)."},
    {"forward", (PyCFunction)(void (*)(void))forward, METH_FASTCALL,
     "forward(reader, src_fd, dst_fd, buffer) -> None | (received, sent): one read, sent on "
     "when it is only complete canonical requests of known names (see the source)."},
    {"bind", bind_names, METH_VARARGS,
     "bind(ordinary, not_holding): the sets of names forward takes (see the source)."},
    {"elements", elements, METH_VARARGS,
     "elements(data, pos, left, max_bulk) -> (pos, values): up to left complete canonical "
     "elements of a request from pos (see the module's source)."},
    {"replies", replies, METH_VARARGS,
     "replies(data, pos, limit, max_bulk, max_line, max_depth, max_elements) -> (count, end, "
     "error): the complete plain replies from pos (see the module's source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_scan",
    "Where a run of canonical Redis requests ends, in C (SINGLE mode's count).", -1, methods,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    IO_INTERN(s_args, "_args");
    IO_INTERN(s_held, "_held");
    IO_INTERN(s_pos, "_pos");
    IO_INTERN(s_buf, "_buf");
    IO_INTERN(s_error, "_error");
    IO_INTERN(s_fast, "_fast");
    IO_INTERN(s_offset, "_offset");
    return io_module_with_forward(&module, forward_read);
}

/* SINGLE mode's plain path in C (see _io.h for why, and for the codes).
 *
 * pump(src_fd, dst_fd, buffer) -> (received, sent): one read of src_fd into buffer, and all of
 * it sent to dst_fd: a server's replies that go to the client unframed.
 *
 * serve(relay, fds, ready, start, buffer[, shorts]) -> None | (index, received, sent): a batch
 * of ready sockets, from ready[start] on, each read and sent on here while it is in the plain
 * state; returns at the first that needs Python (see serve's comment below). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <sys/epoll.h>

#include "_io.h"

static PyObject *
pump(PyObject *self, PyObject *args)
{
    int src, dst;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "iiw*", &src, &dst, &view))
        return NULL;
    Py_ssize_t received, sent = 0;
    Py_BEGIN_ALLOW_THREADS
    received = io_recv(src, view.buf, view.len);
    if (received > 0)
        sent = io_send(dst, view.buf, received);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return Py_BuildValue("nn", received, sent);
}

/* ---- serve ---------------------------------------------------------------------------------
 *
 * Why: with one read per request and one per reply (memcslap), the loop's own Python per ready
 * socket (its dispatch, the checks of the plain state, the bookkeeping of each read) was about
 * 15% of the proxy's CPU and most of its user time (loadtests/reports/profile.md). Here those
 * checks are the same attribute look-ups SingleMode._client_readable and _server_readable make,
 * in the same order, at the same moment, so what the C path does is what the Python path would
 * have done; only the interpreter around them is gone.
 *
 * An event is served here when it is EPOLLIN alone on a socket that is not closed, and:
 *   a server connection: replies unframed (replies None), no sentinel awaited, not the
 *     engine's, its client there, not closed and with nothing queued: pump's read and send;
 *   a client: its server connection there, unframed, not closed, nothing queued to it, the
 *     relay neither carrying names nor watched (carry, watch None), no large value passing
 *     (after_value empty, reader.value_left 0): the reader's forward (its checks are the
 *     reader's own; its C function, reader.c_forward, where it has one, else its Python
 *     method), and on a whole send the bookkeeping of a forwarded read.
 * It returns (index, None, None) for the first event it leaves to Python untouched, and
 * (index, received, sent) for one it read whose result Python must finish (the end of the
 * stream, a failure, a read to frame, a send the peer did not take whole): the same two numbers
 * pump and forward return, handled by the same Python. None when the batch is done. Byte counts
 * of the reads served go into the relay's counters before it returns. An exception met
 * (in a reader's forward) is returned as (index, IO_RAISED, exception).
 *
 * With shorts (a list), a client's read of ordinary requests is not sent at once: each read
 * lands at its own offset of the buffer, and the reads are sent in the order they came just
 * before serve returns (whatever it returns), so a batch's requests reach the servers together
 * and their threads are woken once for several, as HAProxy's stream tasks send after its
 * poller's events (memcached's wake-ups per request behind the proxy: 0.72 when sent at once,
 * 0.44 to 0.53 held, HAProxy 0.50 to 0.55; loadtests/reports/profile.md). A read handed back
 * to Python is moved to the buffer's start once those went. Held requests a server connection
 * did not take whole are appended to shorts as (link, the rest, or None when the send
 * failed), for Python to queue. */

#define IO_RAISED (-4)

static PyTypeObject *server_type, *client_type;

/* The attributes serve reads and writes, by their index in names (interned).
 *
 * On the relay's sockets (exactly ServerConn or ClientConn, whose attributes are __slots__)
 * they are read and written at their slot's offset, as the slot's descriptor would (a slot
 * unset goes through PyObject_GetAttr, which raises as it would): the look-up of the name
 * through the type and its descriptor was a quarter of the batch's user time at -P 16
 * (loadtests/reports/profile.md). The offsets are taken from the classes' descriptors, again
 * whenever either class was changed since (its version tag), and 0 (by name) for what is not
 * a slot of that class. */
enum {
    s_replies,
    s_sentinel,
    s_engine,
    s_client,
    s_out,
    s_closed,
    s_fd,
    s_role,
    s_link,
    s_reader,
    s_after_value,
    s_value_left,
    s_forward,
    s_c_forward,
    s_last_active,
    s_forwarded,
    s_blocking,
    s_carry,
    s_watch,
    s_now,
    s_client_received,
    s_client_sent,
    s_server_received,
    s_server_sent,
    N_NAMES
};
static const char *const texts[N_NAMES] = {
    "replies",
    "sentinel",
    "engine",
    "client",
    "out",
    "closed",
    "fd",
    "role",
    "link",
    "reader",
    "after_value",
    "value_left",
    "forward",
    "c_forward",
    "last_active",
    "forwarded",
    "blocking",
    "carry",
    "watch",
    "now",
    "client_received",
    "client_sent",
    "server_received",
    "server_sent",
};
static PyObject *names[N_NAMES];
static Py_ssize_t server_slots[N_NAMES], client_slots[N_NAMES];
static unsigned int server_tag, client_tag;  /* the classes' version tags when those were taken */

static int take_slots(void);

/* The offsets again when either class changed since they were taken (its version tag): 0, or
 * -1 with an exception set. */
static inline int
slots_now(void)
{
    if (server_type->tp_version_tag == server_tag && client_type->tp_version_tag == client_tag
            && server_tag && client_tag)
        return 0;
    return take_slots();
}

/* obj.name (a new reference), or NULL with an exception set. */
static inline PyObject *
get(PyObject *obj, int name)
{
    PyTypeObject *type = Py_TYPE(obj);
    Py_ssize_t at = type == server_type ? server_slots[name]
        : type == client_type ? client_slots[name] : 0;
    if (at) {
        PyObject *value = *(PyObject **)((char *)obj + at);
        if (value != NULL)
            return Py_NewRef(value);
    }
    return PyObject_GetAttr(obj, names[name]);
}

/* obj.name = value: 0, or -1 with an exception set. */
static inline int
set_attr(PyObject *obj, int name, PyObject *value)
{
    PyTypeObject *type = Py_TYPE(obj);
    Py_ssize_t at = type == server_type ? server_slots[name]
        : type == client_type ? client_slots[name] : 0;
    if (at) {
        Py_XSETREF(*(PyObject **)((char *)obj + at), Py_NewRef(value));
        return 0;
    }
    return PyObject_SetAttr(obj, names[name], value);
}

enum { SERVED, PYTHON, FINISH, FAILED };

static int truth(PyObject *obj, int name);

/* Requests held to the end of the batch (see serve): a client's read of nothing but ordinary
 * requests, at buffer[at:at + size], for the server connection link (whose fd is fd). */
#define MAX_HELD 256
#define MIN_ROOM (64 * 1024)  /* (less room left in the buffer: the held requests go first) */

typedef struct {
    PyObject *link;
    int fd;
    Py_ssize_t at, size;
} held_send;

typedef struct {
    PyObject *buffer;  /* the loop's read buffer (a bytearray) */
    PyObject *window;  /* a memoryview of it, to hand a reader's Python forward its free part
                        * (made when first needed) */
    char *base;
    Py_ssize_t cap, used;  /* its size; where its free part starts */
    PyObject *now;
    Py_ssize_t client_received, client_sent, server_received[2], server_sent[2];
    Py_ssize_t received, sent, at;  /* FINISH's: the read's two numbers, where its bytes are */
    PyObject *shorts;  /* NULL: requests are sent as they are read; else where held ones that
                        * went short are reported: (link, the rest or None when it failed) */
    held_send held[MAX_HELD];
    int n_held;
} batch;

/* Send the held requests, in the order they were read; report those not taken whole. */
static int
flush(batch *b)
{
    int r = 0;
    for (int i = 0; i < b->n_held; i++) {
        held_send *h = &b->held[i];
        if (r == 0) {
            int closed = truth(h->link, s_closed);
            Py_ssize_t sent = closed ? h->size : io_send(h->fd, b->base + h->at, h->size);
            if (closed < 0) {
                r = -1;
            } else if (sent != h->size) {
                PyObject *rest = sent == IO_FAILED ? Py_NewRef(Py_None)
                    : PyBytes_FromStringAndSize(b->base + h->at + sent, h->size - sent);
                PyObject *item = rest ? PyTuple_Pack(2, h->link, rest) : NULL;
                Py_XDECREF(rest);
                if (item == NULL || PyList_Append(b->shorts, item) < 0)
                    r = -1;
                Py_XDECREF(item);
            }
        }
        Py_DECREF(h->link);
    }
    b->n_held = 0;
    b->used = 0;
    return r;
}

/* 1 when obj.name is true, 0 when false, -1 on an error. */
static int
truth(PyObject *obj, int name)
{
    return io_true(get(obj, name));
}

/* 1 when obj.name is None, 0 when not, -1 on an error. */
static int
is_none(PyObject *obj, int name)
{
    return io_none(get(obj, name));
}

/* obj.name as a C long (fd, role); -1 with an exception set on an error. */
static long
number_of(PyObject *obj, int name)
{
    PyObject *value = get(obj, name);
    if (value == NULL)
        return -1;
    long n = PyLong_AsLong(value);
    Py_DECREF(value);
    return n;
}

#define CHECK(expr, bad) do { int t_ = (expr); if (t_ < 0) return FAILED; if (t_ == (bad)) return PYTHON; } while (0)

static int
serve_server(batch *b, PyObject *link, int fd)
{
    CHECK(is_none(link, s_replies), 0);
    CHECK(truth(link, s_sentinel), 1);
    CHECK(truth(link, s_engine), 1);
    PyObject *client = get(link, s_client);
    if (client == NULL)
        return FAILED;
    int ok = client != Py_None ? !truth(client, s_out) : 0;  /* (-1 on an error: checked below) */
    if (ok == 1)
        ok = !truth(client, s_closed);
    long dst = ok == 1 ? number_of(client, s_fd) : 0;
    Py_DECREF(client);  /* (the link still holds it) */
    if (PyErr_Occurred())
        return FAILED;
    if (ok != 1)
        return PYTHON;
    long role = number_of(link, s_role);
    if (role == -1 && PyErr_Occurred())
        return FAILED;
    char *at = b->base + b->used;
    Py_ssize_t received, sent = 0;
    Py_BEGIN_ALLOW_THREADS
    received = io_recv(fd, at, b->cap - b->used);
    if (received > 0)
        sent = io_send((int)dst, at, received);
    Py_END_ALLOW_THREADS
    if (received == IO_AGAIN)
        return SERVED;
    if (received > 0 && sent == received) {
        b->server_received[role & 1] += received;
        b->client_sent += received;
        return SERVED;
    }
    b->received = received;
    b->sent = sent;
    b->at = b->used;
    return FINISH;
}

static int serve_link(batch *b, PyObject *client, PyObject *link, int fd);

static int
serve_client(batch *b, PyObject *client, int fd)
{
    PyObject *link = get(client, s_link);
    if (link == NULL)
        return FAILED;
    /* (held for the whole read: a reader's forward in Python runs code, which could drop the
     * client's link, and the link is held to the batch's end after it) */
    int r = link == Py_None ? PYTHON : serve_link(b, client, link, fd);
    Py_DECREF(link);
    return r;
}

static int
serve_link(batch *b, PyObject *client, PyObject *link, int fd)
{
    CHECK(is_none(link, s_replies), 0);
    CHECK(truth(link, s_out), 1);
    CHECK(truth(link, s_closed), 1);
    CHECK(truth(client, s_after_value), 1);
    PyObject *reader = get(client, s_reader);
    if (reader == NULL)
        return FAILED;
    int left = truth(reader, s_value_left);
    long dst = left == 0 ? number_of(link, s_fd) : 0;
    long role = left == 0 ? number_of(link, s_role) : 0;
    if (left < 0 || PyErr_Occurred()) {
        Py_DECREF(reader);
        return FAILED;
    }
    if (left) {
        Py_DECREF(reader);
        return PYTHON;
    }
    int holding = b->shorts != NULL;
    if (holding && (b->cap - b->used < MIN_ROOM || b->n_held == MAX_HELD) && flush(b) < 0) {
        Py_DECREF(reader);
        return FAILED;
    }
    /* Held: the reader's forward reads into the buffer's free part and, told -1 for where to
     * send, leaves the send to the end of the batch (IO_DEFERRED). Through the reader's C
     * function where it has one (c_forward, relay/_io.h), else its Python method. */
    Py_ssize_t received, sent;
    PyObject *capsule = get(reader, s_c_forward);
    if (capsule == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();  /* (a reader without one: its method) */
        capsule = Py_NewRef(Py_None);
    }
    if (capsule == NULL) {
        Py_DECREF(reader);
        return FAILED;
    }
    if (capsule != Py_None) {
        io_forward_fn forward = (io_forward_fn)PyCapsule_GetPointer(capsule, IO_FORWARD_CAPSULE);
        Py_DECREF(capsule);
        int r = forward == NULL ? -1 : forward(reader, fd, holding ? -1 : (int)dst,
                                              b->base + b->used, b->cap - b->used, &received,
                                              &sent);
        Py_DECREF(reader);
        if (r < 0)
            return FAILED;
        if (r == 0)
            return PYTHON;  /* (nothing was read: the Python path reads and frames it) */
    } else {
        Py_DECREF(capsule);
        if (holding && b->window == NULL
                && (b->window = PyMemoryView_FromObject(b->buffer)) == NULL) {
            Py_DECREF(reader);
            return FAILED;
        }
        PyObject *into = holding ? PySequence_GetSlice(b->window, b->used, b->cap)
            : Py_NewRef(b->buffer);
        PyObject *src = PyLong_FromLong(fd), *dst_obj = PyLong_FromLong(holding ? -1 : dst);
        PyObject *got = src && dst_obj && into
            ? PyObject_CallMethodObjArgs(reader, names[s_forward], src, dst_obj, into, NULL) : NULL;
        Py_XDECREF(src);
        Py_XDECREF(dst_obj);
        Py_XDECREF(into);
        Py_DECREF(reader);
        if (got == NULL)
            return FAILED;
        if (got == Py_None) {
            Py_DECREF(got);
            return PYTHON;  /* (nothing was read: the Python path reads and frames it) */
        }
        int parsed = PyArg_ParseTuple(got, "nn", &received, &sent);
        Py_DECREF(got);
        if (!parsed)
            return FAILED;
    }
    if (received == IO_AGAIN)
        return SERVED;
    if (received > 0 && sent == IO_DEFERRED) {
        held_send *h = &b->held[b->n_held++];
        h->link = Py_NewRef(link);
        h->fd = (int)dst;
        h->at = b->used;
        h->size = received;
        b->used += received;
        sent = received;  /* (counted as sent: a short send reports its rest, as pump does) */
    }
    if (received > 0 && sent == received) {
        b->client_received += received;
        b->server_sent[role & 1] += received;
        if (set_attr(client, s_last_active, b->now) < 0
                || set_attr(client, s_forwarded, Py_True) < 0
                || set_attr(client, s_blocking, Py_False) < 0)
            return FAILED;
        return SERVED;
    }
    b->received = received;
    b->sent = sent;
    b->at = b->used;
    return FINISH;
}

/* relay.name += n */
static int
add_to(PyObject *relay, int name, Py_ssize_t n)
{
    if (!n)
        return 0;
    PyObject *value = get(relay, name);
    if (value == NULL)
        return -1;
    PyObject *more = PyLong_FromSsize_t(n), *sum = more ? PyNumber_Add(value, more) : NULL;
    Py_DECREF(value);
    Py_XDECREF(more);
    if (sum == NULL)
        return -1;
    int r = set_attr(relay, name, sum);
    Py_DECREF(sum);
    return r;
}

/* relay.name[0] += n[0], relay.name[1] += n[1] */
static int
add_to_roles(PyObject *relay, int name, const Py_ssize_t n[2])
{
    if (!n[0] && !n[1])
        return 0;
    PyObject *list = get(relay, name);
    if (list == NULL)
        return -1;
    int r = 0;
    for (Py_ssize_t i = 0; i < 2 && r == 0; i++) {
        if (!n[i])
            continue;
        PyObject *value = PySequence_GetItem(list, i);
        PyObject *more = value ? PyLong_FromSsize_t(n[i]) : NULL;
        PyObject *sum = more ? PyNumber_Add(value, more) : NULL;
        Py_XDECREF(value);
        Py_XDECREF(more);
        r = sum ? PySequence_SetItem(list, i, sum) : -1;
        Py_XDECREF(sum);
    }
    Py_DECREF(list);
    return r;
}

static int
count(PyObject *relay, batch *b)
{
    return add_to(relay, s_client_received, b->client_received) < 0
        || add_to(relay, s_client_sent, b->client_sent) < 0
        || add_to_roles(relay, s_server_received, b->server_received) < 0
        || add_to_roles(relay, s_server_sent, b->server_sent) < 0 ? -1 : 0;
}

static PyObject *
serve(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 5 || nargs > 6 || !PyDict_Check(args[1]) || !PyList_Check(args[2])
            || (nargs == 6 && !PyList_Check(args[5]))) {
        PyErr_SetString(PyExc_TypeError, "serve(relay, fds, ready, start, buffer[, shorts])");
        return NULL;
    }
    if (server_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "serve: classes() was not called");
        return NULL;
    }
    if (slots_now() < 0)
        return NULL;
    PyObject *relay = args[0], *fds = args[1], *ready = args[2];
    Py_ssize_t start = PyLong_AsSsize_t(args[3]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    batch b = {.buffer = args[4], .shorts = nargs == 6 ? args[5] : NULL};
    int plain = is_none(relay, s_carry);
    if (plain == 1)
        plain = is_none(relay, s_watch);
    if (plain < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(b.buffer, &view, PyBUF_WRITABLE) < 0)
        return NULL;
    b.base = view.buf;
    b.cap = view.len;
    b.now = get(relay, s_now);
    if (b.now == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    PyObject *result = NULL;
    int finished = 0;
    Py_ssize_t i = start, n = PyList_GET_SIZE(ready);
    for (; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(ready, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "serve: ready holds (fd, events) pairs");
            goto done;
        }
        PyObject *key = PyTuple_GET_ITEM(item, 0);
        long events = PyLong_AsLong(PyTuple_GET_ITEM(item, 1));
        if (events == -1 && PyErr_Occurred())
            goto done;
        PyObject *side = PyDict_GetItemWithError(fds, key);  /* (borrowed) */
        if (side == NULL) {
            if (PyErr_Occurred())
                goto done;
            continue;  /* (a socket closed earlier in the batch: as the Python loop skips it) */
        }
        int fd = (int)PyLong_AsLong(key);
        int r = PYTHON;
        if (events == EPOLLIN && (Py_TYPE(side) == server_type || Py_TYPE(side) == client_type)) {
            Py_INCREF(side);
            r = truth(side, s_closed);
            if (r == 0)
                r = Py_TYPE(side) == server_type ? serve_server(&b, side, fd)
                    : plain ? serve_client(&b, side, fd) : PYTHON;
            else
                r = r < 0 ? FAILED : PYTHON;
            Py_DECREF(side);
        }
        if (r == SERVED)
            continue;
        if (r == PYTHON) {
            result = Py_BuildValue("nOO", i, Py_None, Py_None);
        } else if (r == FINISH) {
            result = Py_BuildValue("nnn", i, b.received, b.sent);
            finished = 1;
        } else {
            PyObject *type, *value, *traceback;
            PyErr_Fetch(&type, &value, &traceback);
            PyErr_NormalizeException(&type, &value, &traceback);
            if (traceback != NULL && value != NULL)
                PyException_SetTraceback(value, traceback);
            result = Py_BuildValue("niO", i, IO_RAISED, value ? value : Py_None);
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(traceback);
        }
        break;
    }
    if (i == n) {
        result = Py_None;
        Py_INCREF(result);
    }
done:
    if (b.n_held) {
        /* The held requests go before anything returns to Python (which may send to the same
         * server connections, or read into the buffer). An error met before them wins. */
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        int flushed = flush(&b);
        if (type != NULL)
            PyErr_Restore(type, value, traceback);
        else if (flushed < 0)
            Py_CLEAR(result);
    }
    if (finished && b.received > 0 && b.at)  /* (Python finds a read at the buffer's start) */
        memmove(b.base, b.base + b.at, (size_t)b.received);
    Py_DECREF(b.now);
    Py_XDECREF(b.window);
    PyBuffer_Release(&view);
    if (result != NULL && count(relay, &b) < 0)
        Py_CLEAR(result);
    return result;
}

/* One client's replies for deliver: sent whole (counted in *total), or handed back in left
 * with the part sent. -1 with an exception set on an error. */
static int
deliver_one(PyObject *client, PyObject *data, PyObject *left, Py_ssize_t *total)
{
    Py_ssize_t sent = 0;
    int busy = Py_TYPE(client) != client_type || !PyBytes_Check(data);
    if (!busy) {
        busy = truth(client, s_out);
        if (busy == 0)
            busy = truth(client, s_closed);
        if (busy < 0)
            return -1;
    }
    if (!busy) {
        Py_ssize_t size = PyBytes_GET_SIZE(data);
        long fd = number_of(client, s_fd);
        if (fd == -1 && PyErr_Occurred())
            return -1;
        const char *bytes = PyBytes_AS_STRING(data);
        Py_BEGIN_ALLOW_THREADS  /* (as Output.send's sock.send does, for the proxy's threads) */
        sent = size ? io_send((int)fd, bytes, size) : 0;
        Py_END_ALLOW_THREADS
        if (sent == size) {
            *total += size;
            return 0;
        }
        sent = sent < 0 ? 0 : sent;  /* (failed: Output.send meets the error again) */
        *total += sent;
    }
    PyObject *item = Py_BuildValue("(OOn)", client, data, sent);
    if (item == NULL || PyList_Append(left, item) < 0) {
        Py_XDECREF(item);
        return -1;
    }
    Py_DECREF(item);
    return 0;
}

/* deliver(relay, by_id, replies) -> [(client, data, sent), ...]: during an update, the replies
 * the engine gathered over a batch (DeliverAll: {client id: bytes}) written to their clients, as
 * Output.send would, without a trip through Python for each. A client whose earlier output still
 * waits, or that closed, or did not take its replies whole (sent: the part it took), is handed
 * back for Output.send, which queues the rest; so is a list of buffers (large replies, not
 * joined: Output.send writes them with sendmsg). relay.client_sent counts what went here. */
static PyObject *
deliver(PyObject *self, PyObject *args)
{
    PyObject *relay, *by_id, *replies;
    if (!PyArg_ParseTuple(args, "OO!O!", &relay, &PyDict_Type, &by_id, &PyDict_Type, &replies))
        return NULL;
    if (client_type != NULL && slots_now() < 0)
        return NULL;
    PyObject *left = PyList_New(0);
    if (left == NULL)
        return NULL;
    Py_ssize_t pos = 0, total = 0;
    PyObject *key, *data;
    while (PyDict_Next(replies, &pos, &key, &data)) {
        PyObject *client = PyDict_GetItemWithError(by_id, key);
        if (client == NULL) {
            if (PyErr_Occurred())
                goto error;
            continue;  /* (gone: as Output.send, nothing to write to) */
        }
        /* Owned from here: the GIL is released around the send, and another thread may take
         * the client out of by_id meanwhile. */
        Py_INCREF(client);
        Py_INCREF(data);
        int failed = deliver_one(client, data, left, &total);
        Py_DECREF(client);
        Py_DECREF(data);
        if (failed)
            goto error;
    }
    if (add_to(relay, s_client_sent, total) < 0)
        goto error;
    return left;
error:
    Py_DECREF(left);
    return NULL;
}

/* The slots' offsets of type's instances, for the names (see get). */
static int
slots_of(PyTypeObject *type, Py_ssize_t *slots)
{
    int generic = type->tp_getattro == PyObject_GenericGetAttr
        && type->tp_setattro == PyObject_GenericSetAttr;  /* (else every name by name) */
    for (int i = 0; i < N_NAMES; i++) {
        slots[i] = 0;
        if (!generic)
            continue;
        PyObject *descr = PyObject_GetAttr((PyObject *)type, names[i]);
        if (descr == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                return -1;
            PyErr_Clear();
            continue;
        }
        if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
            if (member->type == T_OBJECT_EX && !(member->flags & READONLY) && member->offset > 0)
                slots[i] = member->offset;
        }
        Py_DECREF(descr);
    }
    return 0;
}

/* (Again) the offsets of the slots of both classes, and their version tags then. */
static int
take_slots(void)
{
    if (slots_of(server_type, server_slots) < 0 || slots_of(client_type, client_slots) < 0) {
        memset(server_slots, 0, sizeof server_slots);
        memset(client_slots, 0, sizeof client_slots);
        server_tag = client_tag = 0;
        return -1;
    }
    server_tag = server_type->tp_version_tag;  /* (the look-ups above gave them one) */
    client_tag = client_type->tp_version_tag;
    return 0;
}

/* classes(ServerConn, ClientConn): the classes serve tells the sockets apart by. */
static PyObject *
bind_classes(PyObject *self, PyObject *args)
{
    PyObject *server, *client;
    if (!PyArg_ParseTuple(args, "O!O!", &PyType_Type, &server, &PyType_Type, &client))
        return NULL;
    Py_XSETREF(server_type, (PyTypeObject *)Py_NewRef(server));
    Py_XSETREF(client_type, (PyTypeObject *)Py_NewRef(client));
    if (take_slots() < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"pump", pump, METH_VARARGS,
     "pump(src_fd, dst_fd, buffer) -> (received, sent): one read of src_fd into buffer, sent "
     "on to dst_fd (see _io.h)."},
    {"serve", (PyCFunction)(void (*)(void))serve, METH_FASTCALL,
     "serve(relay, fds, ready, start, buffer[, shorts]) -> None | (index, received, sent): the "
     "ready sockets in the plain state served from ready[start] on; with shorts, clients' "
     "requests sent at the end (see the source)."},
    {"deliver", deliver, METH_VARARGS,
     "deliver(relay, by_id, replies) -> [(client, data, sent)]: each client its replies, "
     "those it could not take whole (or that must queue) handed back (see the source)."},
    {"classes", bind_classes, METH_VARARGS,
     "classes(ServerConn, ClientConn): the classes of the relay's sockets, for serve."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pump", "SINGLE mode's plain path: reads and their sends in C.", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__pump(void)
{
for (int i = 0; i < N_NAMES; i++) {
        if ((names[i] = PyUnicode_InternFromString(texts[i])) == NULL)
            return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "IO_RAISED", IO_RAISED) < 0)
        Py_CLEAR(m);
    return m;
}

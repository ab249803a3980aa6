/* One read and its forwarding in a single call from Python: SINGLE mode's plain path.
 *
 * Why C: at one request per read (redis-benchmark -c 1, memcslap) the proxy's user time per
 * request and reply was 6 to 7 us against HAProxy's 1.5 to 2 (loadtests/reports/profile.md), most
 * of it the Python around each system call: the recv_into wrapper, copying the read out of the
 * loop's buffer, the send wrapper and its checks. Here the read lands in the loop's buffer and is
 * sent from it, with the GIL released once around both calls; Python only looks at the two
 * numbers that come back, and copies the bytes out only when the peer did not take them all.
 *
 * The codes, shared by every caller (relay/_pump.c, protocols/memcache/_scan.c):
 *   received: > 0 bytes read; 0 the end of the stream; IO_AGAIN nothing to read (EAGAIN/EINTR);
 *             IO_FAILED the read failed (a reset: the caller treats it as the end).
 *   sent:     >= 0 bytes the peer took (0 on EAGAIN); IO_FAILED the send failed; IO_HELD not
 *             sent (the caller's check said the bytes must go through Python: buffer[:received]);
 *             IO_DEFERRED not sent because the destination given was -1: the caller sends the
 *             bytes itself later (relay/_pump.c serve, at the end of its batch), and they count
 *             as forwarded.
 */
#ifndef TWINPROXY_IO_H
#define TWINPROXY_IO_H

#include <errno.h>
#include <limits.h>
#include <sys/socket.h>
#include <sys/types.h>

#define IO_AGAIN (-1)
#define IO_FAILED (-2)
#define IO_HELD (-3)
#define IO_DEFERRED (-5)

/* A request reader's forward as a C function, for relay/_pump.c's batch: the reader's class
 * attribute ``c_forward`` holds it in a capsule named IO_FORWARD_CAPSULE (None: the batch calls
 * the reader's Python ``forward`` method instead). It does what that method does, given the
 * buffer as a pointer and its size: returns 0 when the reader cannot (nothing read: the method's
 * None), 1 with the read's two numbers in *received and *sent (the codes above; dst -1 for
 * IO_DEFERRED), -1 with an exception set. Why: the method's call, its frame and its arguments'
 * conversions were the largest part of the proxy's user time per client read at -P 16
 * (loadtests/reports/profile.md). */
typedef int (*io_forward_fn)(PyObject *reader, int src, int dst, char *buf, Py_ssize_t size,
                             Py_ssize_t *received, Py_ssize_t *sent);
#define IO_FORWARD_CAPSULE "twinproxy.relay._io.forward"

/* Whether an attribute just read (a new reference, consumed; NULL: the read failed, with an
 * exception set) is true: 1, 0, or -1 on an error. */
static inline int
io_true(PyObject *value)
{
    if (value == NULL)
        return -1;
    int t = PyObject_IsTrue(value);
    Py_DECREF(value);
    return t;
}

/* The same for whether it is None. */
static inline int
io_none(PyObject *value)
{
    if (value == NULL)
        return -1;
    Py_DECREF(value);
    return value == Py_None;
}

/* The reader's state, as a forward function checks it before it reads (the Python method's
 * checks): whether reader.name is None, and whether it is true (1, 0, or -1 on an error). */
static inline int
io_none_at(PyObject *reader, PyObject *name)
{
    return io_none(PyObject_GetAttr(reader, name));
}

static inline int
io_true_at(PyObject *reader, PyObject *name)
{
    return io_true(PyObject_GetAttr(reader, name));
}

/* reader.name += n (a forward function's stream offset, past a read it sent on): 0, or -1 on
 * an error. */
static inline int
io_add_at(PyObject *reader, PyObject *name, Py_ssize_t n)
{
    PyObject *value = PyObject_GetAttr(reader, name);
    PyObject *more = value ? PyLong_FromSsize_t(n) : NULL;
    PyObject *sum = more ? PyNumber_Add(value, more) : NULL;
    Py_XDECREF(value);
    Py_XDECREF(more);
    int r = sum ? PyObject_SetAttr(reader, name, sum) : -1;
    Py_XDECREF(sum);
    return r;
}

/* A forward function called from Python (METH_FASTCALL), as the reader's ``forward`` method
 * calls it: forward(reader, src_fd, dst_fd, buffer) -> None | (received, sent). */
static inline PyObject *
io_forward_call(io_forward_fn forward, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "forward(reader, src_fd, dst_fd, buffer)");
        return NULL;
    }
    long src = PyLong_AsLong(args[1]), dst = src == -1 && PyErr_Occurred() ? 0
        : PyLong_AsLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    if (src < INT_MIN || src > INT_MAX || dst < INT_MIN || dst > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "forward: a file descriptor out of range");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[3], &view, PyBUF_WRITABLE) < 0)
        return NULL;
    Py_ssize_t received, sent;
    int r = forward(args[0], (int)src, (int)dst, view.buf, view.len, &received, &sent);
    PyBuffer_Release(&view);
    if (r < 0)
        return NULL;
    if (r == 0)
        Py_RETURN_NONE;
    return Py_BuildValue("nn", received, sent);
}

/* A protocol's compiled module with its forward function as FORWARD, the capsule its reader
 * class holds as ``c_forward``; NULL with an exception set. IO_INTERN makes the names of the
 * attributes that function reads, once, at import. */
#define IO_INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

static inline PyObject *
io_module_with_forward(PyModuleDef *def, io_forward_fn forward)
{
    PyObject *m = PyModule_Create(def);
    PyObject *capsule = m ? PyCapsule_New((void *)forward, IO_FORWARD_CAPSULE, NULL) : NULL;
    if (capsule == NULL || PyModule_AddObject(m, "FORWARD", capsule) < 0) {
        Py_XDECREF(capsule);
        Py_XDECREF(m);
        return NULL;
    }
    return m;
}

static Py_ssize_t
io_recv(int fd, char *buf, Py_ssize_t size)
{
    ssize_t n = recv(fd, buf, (size_t)size, 0);
    if (n >= 0)
        return (Py_ssize_t)n;
    return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? IO_AGAIN : IO_FAILED;
}

static Py_ssize_t
io_send(int fd, const char *buf, Py_ssize_t size)
{
    if (fd < 0)
        return IO_DEFERRED;
    ssize_t n = send(fd, buf, (size_t)size, 0);
    if (n >= 0)
        return (Py_ssize_t)n;
    return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : IO_FAILED;
}

#endif

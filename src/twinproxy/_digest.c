/* The digest of a large reply: XXH64 under two seeds, 16 bytes.
 *
 * Why: a reply over LARGE_REPLY is kept as its size and a digest while the follower's reply is
 * awaited (verdicts.py), and the follower's is digested as it comes. With 100 KB values in MVE,
 * blake2b took 109 us per reply and 40% of the proxy's samples
 * (loadtests/profile_mve.py --mode mve --pipeline 16 --size 102400). The digest does not have to
 * resist an attacker: both servers are sent the same bytes, and it only tells whether two replies
 * of the same size differ. XXH64 (Yann Collet's, implemented here from its specification)
 * is made for that and reads about ten times faster; two seeds over the same stripes give
 * 128 bits for little more than the cost of one, as the lanes run side by side.
 *
 * Hasher() -> an object with update(bytes-like) and digest() -> 16 bytes, the two XXH64 values
 * in their canonical (big-endian) form, seed 0 then SEED_B. digest(bytes-like) -> the same for
 * one buffer. Fed in any pieces, a Hasher gives what digest() gives for their concatenation. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL
#define P4 0x85EBCA77C2B2AE63ULL
#define P5 0x27D4EB2F165667C5ULL
#define SEED_B 0x9E3779B97F4A7C15ULL
#define STRIPE 32

static inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t read64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline uint32_t read32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}

static inline uint64_t mix(uint64_t acc, uint64_t input)
{
    acc += input * P2;
    return rotl(acc, 31) * P1;
}

typedef struct {
    uint64_t v[8];          /* lanes 0-3 under seed 0, 4-7 under SEED_B */
    uint64_t total;         /* bytes fed */
    uint8_t buf[STRIPE];    /* the start of a stripe not yet whole */
    size_t buffered;
} State;

static void
state_init(State *s)
{
    const uint64_t seeds[2] = {0, SEED_B};
    for (int k = 0; k < 2; k++) {
        s->v[4 * k + 0] = seeds[k] + P1 + P2;
        s->v[4 * k + 1] = seeds[k] + P2;
        s->v[4 * k + 2] = seeds[k];
        s->v[4 * k + 3] = seeds[k] - P1;
    }
    s->total = 0;
    s->buffered = 0;
}

static inline void
stripe(State *s, const uint8_t *p)
{
    for (int i = 0; i < 4; i++) {
        uint64_t w = read64(p + 8 * i);
        s->v[i] = mix(s->v[i], w);
        s->v[4 + i] = mix(s->v[4 + i], w);
    }
}

static void
state_update(State *s, const uint8_t *p, size_t len)
{
    s->total += len;
    if (s->buffered) {
        size_t fill = STRIPE - s->buffered;
        if (len < fill) {
            memcpy(s->buf + s->buffered, p, len);
            s->buffered += len;
            return;
        }
        memcpy(s->buf + s->buffered, p, fill);
        stripe(s, s->buf);
        p += fill;
        len -= fill;
        s->buffered = 0;
    }
    for (; len >= STRIPE; p += STRIPE, len -= STRIPE)
        stripe(s, p);
    memcpy(s->buf, p, len);
    s->buffered = len;
}

static uint64_t
lane_final(const State *s, const uint64_t *v, uint64_t seed)
{
    uint64_t h;
    if (s->total >= STRIPE) {
        h = rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18);
        for (int i = 0; i < 4; i++) {
            h ^= mix(0, v[i]);
            h = h * P1 + P4;
        }
    } else {
        h = seed + P5;
    }
    h += s->total;
    const uint8_t *p = s->buf;
    size_t len = s->buffered;
    for (; len >= 8; p += 8, len -= 8) {
        h ^= mix(0, read64(p));
        h = rotl(h, 27) * P1 + P4;
    }
    if (len >= 4) {
        h ^= (uint64_t)read32(p) * P1;
        h = rotl(h, 23) * P2 + P3;
        p += 4;
        len -= 4;
    }
    for (; len; p++, len--) {
        h ^= (uint64_t)(*p) * P5;
        h = rotl(h, 11) * P1;
    }
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

static PyObject *
state_digest(const State *s)
{
    uint8_t out[16];
    uint64_t h[2] = {lane_final(s, s->v, 0), lane_final(s, s->v + 4, SEED_B)};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 8; i++)
            out[8 * k + i] = (uint8_t)(h[k] >> (56 - 8 * i));
    return PyBytes_FromStringAndSize((const char *)out, 16);
}

/* ---- the Python side ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    State state;
} Hasher;

static int
hasher_init(Hasher *self, PyObject *args, PyObject *kwds)
{
    if (!PyArg_ParseTuple(args, ":Hasher"))
        return -1;
    state_init(&self->state);
    return 0;
}

static PyObject *
hasher_update(Hasher *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    state_update(&self->state, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyObject *
hasher_digest(Hasher *self, PyObject *Py_UNUSED(ignored))
{
    return state_digest(&self->state);
}

static PyMethodDef hasher_methods[] = {
    {"update", (PyCFunction)hasher_update, METH_O, "Feed the next bytes."},
    {"digest", (PyCFunction)hasher_digest, METH_NOARGS,
     "The 16-byte digest of all the bytes fed so far (more may be fed after)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HasherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "twinproxy._digest.Hasher",
    .tp_basicsize = sizeof(Hasher),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "XXH64 under two seeds, fed as bytes come.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)hasher_init,
    .tp_methods = hasher_methods,
};

static PyObject *
digest(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    State s;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    state_init(&s);
    state_update(&s, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return state_digest(&s);
}

static PyMethodDef methods[] = {
    {"digest", digest, METH_O, "The 16-byte digest of one buffer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "twinproxy._digest",
    "The digest of large replies: XXH64 under two seeds.", -1, methods,
};

PyMODINIT_FUNC
PyInit__digest(void)
{
    if (PyType_Ready(&HasherType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&HasherType);
    if (PyModule_AddObject(m, "Hasher", (PyObject *)&HasherType) < 0) {
        Py_DECREF(&HasherType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

/* pump(src_fd, dst_fd, buffer) -> (received, sent): one read of src_fd into buffer, and all of
 * it sent to dst_fd (see _io.h for why, and for the codes). SINGLE mode's path for a server's
 * replies that go to the client unframed. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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

static PyMethodDef methods[] = {
    {"pump", pump, METH_VARARGS,
     "pump(src_fd, dst_fd, buffer) -> (received, sent): one read of src_fd into buffer, sent "
     "on to dst_fd (see _io.h)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pump", "One read and its forwarding in one call (SINGLE mode).", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__pump(void)
{
    return PyModule_Create(&module);
}

/* Optional accelerator of Jail.listdir (issue 16): read a directory fd, sort
 * the names, lstat each one and return the entries, as the pure-Python loop
 * in net/jail.py does, but without a stat_result object per name.
 *
 * It gets a directory fd the Jail already opened (openat2 beneath the root)
 * and only ever acts on single names relative to that fd, with
 * AT_SYMLINK_NOFOLLOW: it never resolves a path, so confinement is the Jail's.
 *
 * Same results as the Python loop, bit for bit: names are decoded and sorted
 * by Python itself (the file system encoding, list.sort), stat fields are
 * converted as posixmodule.c converts them, a name removed meanwhile is
 * skipped, any other error raises the OSError os.stat/os.readlink would.
 * The system calls run without the GIL, so other sessions keep running.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MAXPATHLEN
#define MAXPATHLEN PATH_MAX
#endif

typedef struct {
    const char *name;   /* raw bytes of the name (borrowed) */
    struct stat st;
    int err;            /* errno of lstat or readlink, 0 if fine */
    char *target;       /* readlink text (malloc'ed) for symlinks */
    ssize_t target_len;
} record;

/* Every raw name of the directory (not "." or ".."), as Python str. */
static PyObject *
read_names(int dirfd)
{
    int fd = dup(dirfd);
    if (fd < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    DIR *dir;
    Py_BEGIN_ALLOW_THREADS
    dir = fdopendir(fd);
    if (dir != NULL)
        rewinddir(dir);
    Py_END_ALLOW_THREADS
    if (dir == NULL) {
        int err = errno;
        close(fd);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *names = PyList_New(0);
    if (names == NULL)
        goto fail;
    for (;;) {
        struct dirent *ent;
        errno = 0;
        /* readdir refills its buffer with getdents64 only now and then;
         * the GIL round trip per name would cost more than it frees. */
        ent = readdir(dir);
        if (ent == NULL) {
            if (errno != 0) {
                PyErr_SetFromErrno(PyExc_OSError);
                goto fail;
            }
            break;
        }
        const char *n = ent->d_name;
        if (n[0] == '.' && (n[1] == '\0' || (n[1] == '.' && n[2] == '\0')))
            continue;
        PyObject *s = PyUnicode_DecodeFSDefaultAndSize(n, (Py_ssize_t)strlen(n));
        if (s == NULL)
            goto fail;
        int bad = PyList_Append(names, s);
        Py_DECREF(s);
        if (bad)
            goto fail;
    }
    closedir(dir);
    return names;
fail:
    Py_XDECREF(names);
    closedir(dir);
    return NULL;
}

static PyObject *
stat_float_time(time_t sec, unsigned long nsec)
{
    /* posixmodule.c's fill_time, so st_mtime is the very same double. */
    return PyFloat_FromDouble(sec + nsec * 1e-9);
}

static PyObject *
from_id(unsigned long id)
{
    /* _PyLong_FromUid / _PyLong_FromGid: (uid_t)-1 is -1. */
    if (id == (unsigned long)(uid_t)-1)
        return PyLong_FromLong(-1);
    return PyLong_FromUnsignedLong(id);
}

static PyObject *
make_entry(PyTypeObject *type, PyObject *name, const record *r)
{
    PyObject *items[10];
    items[0] = Py_NewRef(name);
    items[1] = PyLong_FromLong((long)r->st.st_mode);
    items[2] = PyLong_FromLong((long)r->st.st_nlink);
    items[3] = from_id((unsigned long)r->st.st_uid);
    items[4] = from_id((unsigned long)r->st.st_gid);
    items[5] = PyLong_FromLongLong((long long)r->st.st_size);
    items[6] = stat_float_time(r->st.st_mtim.tv_sec, (unsigned long)r->st.st_mtim.tv_nsec);
    items[7] = PyLong_FromUnsignedLongLong((unsigned long long)r->st.st_ino);
    items[8] = PyLong_FromLongLong((long long)r->st.st_dev);
    if (r->target != NULL)
        items[9] = PyUnicode_DecodeFSDefaultAndSize(r->target, r->target_len);
    else
        items[9] = Py_NewRef(Py_None);
    PyObject *e = NULL;
    for (int i = 0; i < 10; i++)
        if (items[i] == NULL)
            goto done;
    e = type->tp_alloc(type, 10);  /* a tuple subclass: Entry */
    if (e == NULL)
        goto done;
    for (int i = 0; i < 10; i++) {
        PyTuple_SET_ITEM(e, i, items[i]);
        items[i] = NULL;
    }
    /* str, int, float and None hold no references: the cyclic GC need never
     * visit this tuple (CPython untracks such tuples itself, but only once a
     * collection has walked them: with 10,000 new entries, collections took
     * some 7 % of a LIST's time). */
    PyObject_GC_UnTrack(e);
done:
    for (int i = 0; i < 10; i++)
        Py_XDECREF(items[i]);
    return e;
}

static PyObject *
scan(PyObject *module, PyObject *args)
{
    int dirfd;
    PyTypeObject *type;
    if (!PyArg_ParseTuple(args, "iO!:scan", &dirfd, &PyType_Type, &type))
        return NULL;
    if (!PyType_IsSubtype(type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "scan: the entry type must be a tuple subclass");
        return NULL;
    }
    PyObject *names = read_names(dirfd);
    if (names == NULL)
        return NULL;
    if (PyList_Sort(names) < 0) {
        Py_DECREF(names);
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(names);
    PyObject *encoded = PyList_New(0);  /* keeps non-ASCII names' bytes alive */
    record *recs = PyMem_Calloc(n ? (size_t)n : 1, sizeof(record));
    PyObject *out = NULL;
    if (encoded == NULL || recs == NULL) {
        if (recs == NULL)
            PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *s = PyList_GET_ITEM(names, i);
        if (PyUnicode_IS_ASCII(s)) {  /* fs encodings are ASCII-compatible */
            recs[i].name = (const char *)PyUnicode_DATA(s);
            continue;
        }
        PyObject *b = PyUnicode_EncodeFSDefault(s);
        if (b == NULL)
            goto done;
        int bad = PyList_Append(encoded, b);
        Py_DECREF(b);
        if (bad)
            goto done;
        recs[i].name = PyBytes_AS_STRING(b);
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        record *r = &recs[i];
        if (fstatat(dirfd, r->name, &r->st, AT_SYMLINK_NOFOLLOW) != 0) {
            r->err = errno;
            continue;
        }
        if (S_ISLNK(r->st.st_mode)) {
            /* os.readlink's buffer and its (non-)check of truncation */
            r->target = malloc(MAXPATHLEN + 1);
            if (r->target == NULL) {
                r->err = ENOMEM;
                continue;
            }
            r->target_len = readlinkat(dirfd, r->name, r->target, MAXPATHLEN);
            if (r->target_len < 0)
                r->err = errno;
        }
    }
    Py_END_ALLOW_THREADS
    out = PyList_New(0);
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        record *r = &recs[i];
        PyObject *name = PyList_GET_ITEM(names, i);
        if (r->err == ENOENT)  /* removed while we listed */
            continue;
        if (r->err != 0) {
            errno = r->err;
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
            Py_CLEAR(out);
            goto done;
        }
        PyObject *e = make_entry(type, name, r);
        if (e == NULL || PyList_Append(out, e) < 0) {
            Py_XDECREF(e);
            Py_CLEAR(out);
            goto done;
        }
        Py_DECREF(e);
    }
done:
    if (recs != NULL) {
        for (Py_ssize_t i = 0; i < n; i++)
            free(recs[i].target);
        PyMem_Free(recs);
    }
    Py_XDECREF(encoded);
    Py_DECREF(names);
    return out;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(dirfd, entry_type) -> list: lstat data of each entry of the open directory, sorted by name."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "ftpwarden.net._scandir",
    .m_doc = "Optional accelerator of Jail.listdir.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__scandir(void)
{
    return PyModule_Create(&module);
}

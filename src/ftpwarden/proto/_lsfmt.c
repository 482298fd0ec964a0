/* Optional accelerator of proto/listing.py's ls_lines and mlsx_lines
 * (issue 16): the same `ls -l` and MLSD lines, character for character, built
 * without a format call per field.  Pure: no I/O, no clock; the caller passes
 * "now" in whole seconds.
 *
 * It answers None for anything outside the common case it was written for
 * (an entry that is not a 10-tuple of the expected types, a number out of
 * range, a time the C library cannot break down, an owner name that is not
 * a str): listing.py then runs its Python loop, which is the reference.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define SIX_MONTHS (60LL * 60 * 24 * 182)  /* listing._SIX_MONTHS */

static const char MONTHS[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

static long long
floordiv(long long a, long long b)
{
    long long q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* listing._mode_string */
static void
mode_string(unsigned long mode, char out[10])
{
    char t;
    switch (mode & 0170000) {
    case 0100000: t = '-'; break;
    case 0040000: t = 'd'; break;
    case 0120000: t = 'l'; break;
    case 0010000: t = 'p'; break;
    case 0140000: t = 's'; break;
    case 0020000: t = 'c'; break;
    case 0060000: t = 'b'; break;
    default: t = '?';
    }
    out[0] = t;
    static const char rwx[] = "rwxrwxrwx";
    for (int i = 0; i < 9; i++)
        out[1 + i] = (mode & (0400 >> i)) ? rwx[i] : '-';
    if (mode & 04000)
        out[3] = out[3] == 'x' ? 's' : 'S';
    if (mode & 02000)
        out[6] = out[6] == 'x' ? 's' : 'S';
    if (mode & 01000)
        out[9] = out[9] == 'x' ? 't' : 'T';
}

/* listing._date_text(minute, recent, zone): 12 characters, or -1 if the C
 * library cannot break the time down (Python's time module would raise). */
static int
date_text(long long minute, int recent, int localtime, char *out, size_t size)
{
    time_t t = (time_t)(minute * 60);
    struct tm tm;
    if ((localtime ? localtime_r(&t, &tm) : gmtime_r(&t, &tm)) == NULL)
        return -1;
    if (tm.tm_mon < 0 || tm.tm_mon > 11)
        return -1;
    int n = recent ? snprintf(out, size, "%s %02d %02d:%02d", MONTHS[tm.tm_mon], tm.tm_mday, tm.tm_hour, tm.tm_min)
                   : snprintf(out, size, "%s %02d  %lld", MONTHS[tm.tm_mon], tm.tm_mday,
                              (long long)tm.tm_year + 1900);
    return n < 0 || (size_t)n >= size ? -1 : n;
}

/* A non-negative int below 2**32, or -1. */
static long long
small_id(PyObject *o)
{
    if (!PyLong_CheckExact(o))
        return -1;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || v < 0 || v >= (1LL << 32))
        return -1;
    return v;
}

/* An exact int that fits, in *v; 0 if not. */
static int
as_ll(PyObject *o, long long *v)
{
    if (!PyLong_CheckExact(o))
        return 0;
    int overflow;
    *v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (*v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return !overflow;
}

/* int(mtime // 1) for a finite float or an int that fits. */
static int
whole_seconds(PyObject *o, long long *secs)
{
    if (PyFloat_CheckExact(o)) {
        double d = PyFloat_AS_DOUBLE(o);
        if (!isfinite(d) || d > 9e18 || d < -9e18)
            return 0;
        *secs = (long long)floor(d);
        return 1;
    }
    return as_ll(o, secs);
}

/* f"{owner(uid):<8} {group(gid):<8}"; NULL with no error set: not a str. */
static PyObject *
owner_group(PyObject *owner, PyObject *group, PyObject *uid, PyObject *gid)
{
    PyObject *parts[2] = {PyObject_CallOneArg(owner, uid), NULL};
    PyObject *out = NULL;
    if (parts[0] == NULL)
        return NULL;
    parts[1] = PyObject_CallOneArg(group, gid);
    if (parts[1] == NULL)
        goto done;
    if (!PyUnicode_CheckExact(parts[0]) || !PyUnicode_CheckExact(parts[1]))
        goto done;
    Py_ssize_t len[2], width[2], total = 1;
    Py_UCS4 maxchar = 127;
    for (int i = 0; i < 2; i++) {
        len[i] = PyUnicode_GET_LENGTH(parts[i]);
        width[i] = len[i] < 8 ? 8 : len[i];
        total += width[i];
        if (PyUnicode_MAX_CHAR_VALUE(parts[i]) > maxchar)
            maxchar = PyUnicode_MAX_CHAR_VALUE(parts[i]);
    }
    out = PyUnicode_New(total, maxchar);
    if (out == NULL)
        goto done;
    int kind = PyUnicode_KIND(out);
    void *data = PyUnicode_DATA(out);
    Py_ssize_t pos = 0;
    for (int i = 0; i < 2; i++) {
        PyUnicode_CopyCharacters(out, pos, parts[i], 0, len[i]);
        pos += len[i];
        for (Py_ssize_t k = len[i]; k < width[i]; k++)
            PyUnicode_WRITE(kind, data, pos++, ' ');
        if (i == 0)
            PyUnicode_WRITE(kind, data, pos++, ' ');
    }
done:
    Py_XDECREF(parts[0]);
    Py_XDECREF(parts[1]);
    return out;
}

/* A line is a few pieces: ASCII text we formatted, or str objects (names). */
typedef struct {
    const char *ascii;
    Py_ssize_t len;
    PyObject *str;  /* borrowed; NULL for an ASCII piece */
} piece;

#define PIECES_MAX 16
#define SCRATCH 512  /* the ASCII pieces of one line: numbers and fixed words */

typedef struct {
    piece p[PIECES_MAX];
    int n;
    char buf[SCRATCH];
    size_t used;
    int overflow;
} line_t;

static void
add_str(line_t *l, PyObject *s)
{
    if (l->n == PIECES_MAX) {
        l->overflow = 1;
        return;
    }
    l->p[l->n++] = (piece){NULL, PyUnicode_GET_LENGTH(s), s};
}

/* Room for k more bytes of ASCII text: the last piece grows if it is ASCII too. */
static char *
ascii_room(line_t *l, size_t k)
{
    if (l->overflow || l->used + k > SCRATCH) {
        l->overflow = 1;
        return NULL;
    }
    char *at = l->buf + l->used;
    piece *last = l->n ? &l->p[l->n - 1] : NULL;
    if (last != NULL && last->str == NULL && last->ascii + last->len == at) {
        last->len += (Py_ssize_t)k;
    } else if (l->n == PIECES_MAX) {
        l->overflow = 1;
        return NULL;
    } else {
        l->p[l->n++] = (piece){at, (Py_ssize_t)k, NULL};
    }
    l->used += k;
    return at;
}

static void
add_text(line_t *l, const char *s, size_t k)
{
    char *at = ascii_room(l, k);
    if (at != NULL)
        memcpy(at, s, k);
}

#define ADD_LIT(l, s) add_text((l), (s), sizeof(s) - 1)

/* Python's format of an int: `digits` at least (zeros in front, as 02d/03o),
 * right-aligned with spaces in `width` (as >8).  No printf: it is most of
 * the cost of a line. */
static void
add_number(line_t *l, unsigned long long u, int negative, unsigned base, int digits, int width)
{
    char tmp[80];
    int n = 0;
    do {
        tmp[n++] = "0123456789abcdef"[u % base];
        u /= base;
    } while (u != 0);
    while (n < digits)
        tmp[n++] = '0';
    if (negative)
        tmp[n++] = '-';
    int pad = width > n ? width - n : 0;
    char *at = ascii_room(l, (size_t)(pad + n));
    if (at == NULL)
        return;
    memset(at, ' ', (size_t)pad);
    for (int i = 0; i < n; i++)
        at[pad + i] = tmp[n - 1 - i];
}

static void
add_int(line_t *l, long long v, int width)
{
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    add_number(l, u, v < 0, 10, 1, width);
}

/* The str of the pieces; NULL with no error set if the line did not fit. */
static PyObject *
join_line(const line_t *l)
{
    if (l->overflow)
        return NULL;
    Py_ssize_t total = 0;
    Py_UCS4 maxchar = 127;
    for (int i = 0; i < l->n; i++) {
        total += l->p[i].len;
        if (l->p[i].str != NULL && PyUnicode_MAX_CHAR_VALUE(l->p[i].str) > maxchar)
            maxchar = PyUnicode_MAX_CHAR_VALUE(l->p[i].str);
    }
    /* the widest piece's kind is the canonical kind of the whole */
    PyObject *out = PyUnicode_New(total, maxchar);
    if (out == NULL)
        return NULL;
    Py_ssize_t pos = 0;
    if (maxchar < 128) {
        Py_UCS1 *d = PyUnicode_1BYTE_DATA(out);
        for (int i = 0; i < l->n; i++) {
            const void *src = l->p[i].str ? (const void *)PyUnicode_1BYTE_DATA(l->p[i].str) : l->p[i].ascii;
            memcpy(d + pos, src, (size_t)l->p[i].len);
            pos += l->p[i].len;
        }
        return out;
    }
    int kind = PyUnicode_KIND(out);
    void *d = PyUnicode_DATA(out);
    for (int i = 0; i < l->n; i++) {
        if (l->p[i].str != NULL) {
            PyUnicode_CopyCharacters(out, pos, l->p[i].str, 0, l->p[i].len);
            pos += l->p[i].len;
        } else {
            for (Py_ssize_t k = 0; k < l->p[i].len; k++)
                PyUnicode_WRITE(kind, d, pos++, (Py_UCS1)l->p[i].ascii[k]);
        }
    }
    return out;
}

#define OG_CACHE 32  /* a directory has few distinct owner/group pairs */

typedef struct {
    long long key;
    PyObject *text;
} og_slot;

static PyObject *
ls_lines(PyObject *module, PyObject *args)
{
    PyObject *entries, *owner, *group;
    long long now_secs;
    int localtime;
    if (!PyArg_ParseTuple(args, "OLpOO:ls_lines", &entries, &now_secs, &localtime, &owner, &group))
        return NULL;
    PyObject *seq = PySequence_Fast(entries, "ls_lines: entries must be iterable");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    long long oldest = now_secs - SIX_MONTHS;
    og_slot og[OG_CACHE];
    int og_used = 0;
    long long last_minute = 0;
    int last_recent = -1;
    char date[64];
    int date_len = 0;
    PyObject *out = PyList_New(n);
    if (out == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = items[i];
        if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) != 10)
            goto fallback;
        PyObject *name = PyTuple_GET_ITEM(e, 0), *target = PyTuple_GET_ITEM(e, 9);
        long long mode, nlink, size, secs;
        long long uid = small_id(PyTuple_GET_ITEM(e, 3)), gid = small_id(PyTuple_GET_ITEM(e, 4));
        if (!PyUnicode_CheckExact(name) || (target != Py_None && !PyUnicode_CheckExact(target))
            || !as_ll(PyTuple_GET_ITEM(e, 1), &mode) || mode < 0 || mode >= (1LL << 32)
            || !as_ll(PyTuple_GET_ITEM(e, 2), &nlink) || !as_ll(PyTuple_GET_ITEM(e, 5), &size)
            || !whole_seconds(PyTuple_GET_ITEM(e, 6), &secs) || uid < 0 || gid < 0)
            goto fallback;

        long long key = uid << 32 | gid;
        PyObject *og_text = NULL;
        for (int k = 0; k < og_used; k++)
            if (og[k].key == key) {
                og_text = og[k].text;
                break;
            }
        if (og_text == NULL) {
            og_text = owner_group(owner, group, PyTuple_GET_ITEM(e, 3), PyTuple_GET_ITEM(e, 4));
            if (og_text == NULL) {
                if (PyErr_Occurred())
                    goto fail;
                goto fallback;
            }
            if (og_used == OG_CACHE) {  /* rare: start over */
                for (int k = 0; k < og_used; k++)
                    Py_DECREF(og[k].text);
                og_used = 0;
            }
            og[og_used].key = key;
            og[og_used].text = og_text;
            og_used++;
        }

        long long minute = floordiv(secs, 60);
        int recent = oldest <= secs && secs <= now_secs;
        if (recent != last_recent || minute != last_minute) {
            date_len = date_text(minute, recent, localtime, date, sizeof date);
            if (date_len < 0) {
                last_recent = -1;
                goto fallback;
            }
            last_minute = minute;
            last_recent = recent;
        }

        /* "mode nlink " + og + " size date " + name [+ " -> " + target] */
        char mode_chars[10];
        mode_string((unsigned long)mode, mode_chars);
        line_t l;
        l.n = 0;
        l.used = 0;
        l.overflow = 0;
        add_text(&l, mode_chars, 10);
        ADD_LIT(&l, " ");
        add_int(&l, nlink, 4);
        ADD_LIT(&l, " ");
        add_str(&l, og_text);
        ADD_LIT(&l, " ");
        add_int(&l, size, 8);
        ADD_LIT(&l, " ");
        add_text(&l, date, (size_t)date_len);
        ADD_LIT(&l, " ");
        add_str(&l, name);
        if (target != Py_None && (mode & 0170000) == 0120000) {
            ADD_LIT(&l, " -> ");
            add_str(&l, target);
        }
        PyObject *line = join_line(&l);
        if (line == NULL) {
            if (PyErr_Occurred())
                goto fail;
            goto fallback;
        }
        PyList_SET_ITEM(out, i, line);
    }
    goto done;
fallback:
    Py_CLEAR(out);
    out = Py_NewRef(Py_None);
    goto done;
fail:
    Py_CLEAR(out);
done:
    for (int k = 0; k < og_used; k++)
        Py_DECREF(og[k].text);
    Py_DECREF(seq);
    return out;
}

/* listing._type_fact for what is neither a directory nor a file, into l. */
static void
add_type_fact(line_t *l, unsigned long mode, PyObject *target)
{
    switch (mode & 0170000) {
    case 0120000:
        /* the link's text unless it would break the line: ";", " ", CR, LF */
        if (target != Py_None && PyUnicode_GET_LENGTH(target) > 0
            && PyUnicode_FindChar(target, ';', 0, PY_SSIZE_T_MAX, 1) == -1
            && PyUnicode_FindChar(target, ' ', 0, PY_SSIZE_T_MAX, 1) == -1
            && PyUnicode_FindChar(target, '\r', 0, PY_SSIZE_T_MAX, 1) == -1
            && PyUnicode_FindChar(target, '\n', 0, PY_SSIZE_T_MAX, 1) == -1) {
            ADD_LIT(l, "type=OS.unix=slink:");
            add_str(l, target);
            ADD_LIT(l, ";");
        } else {
            ADD_LIT(l, "type=OS.unix=slink;");
        }
        return;
    case 0010000: ADD_LIT(l, "type=OS.unix=fifo;"); return;
    case 0140000: ADD_LIT(l, "type=OS.unix=socket;"); return;
    case 0020000: ADD_LIT(l, "type=OS.unix=chr;"); return;
    case 0060000: ADD_LIT(l, "type=OS.unix=blk;"); return;
    default: ADD_LIT(l, "type=OS.unix=unknown;");
    }
}

/* One name fact per distinct id: "unix.owner=NAME;" as a str. */
typedef struct {
    long long id;
    PyObject *text;
} id_slot;

#define ID_CACHE 32

typedef struct {
    id_slot s[ID_CACHE];
    int used;
} id_cache;

/* Borrowed from the cache; NULL (error set or not: not a str) on failure. */
static PyObject *
id_fact(id_cache *c, PyObject *names, const char *prefix, PyObject *id_obj, long long id)
{
    for (int k = 0; k < c->used; k++)
        if (c->s[k].id == id)
            return c->s[k].text;
    PyObject *name = PyObject_CallOneArg(names, id_obj);
    if (name == NULL)
        return NULL;
    PyObject *text = NULL;
    if (PyUnicode_CheckExact(name))
        text = PyUnicode_FromFormat("%s%U;", prefix, name);
    Py_DECREF(name);
    if (text == NULL)
        return NULL;
    if (c->used == ID_CACHE) {  /* rare: start over */
        for (int k = 0; k < c->used; k++)
            Py_DECREF(c->s[k].text);
        c->used = 0;
    }
    c->s[c->used].id = id;
    c->s[c->used].text = text;
    c->used++;
    return text;
}

enum { F_TYPE = 1, F_SIZE = 2, F_MODIFY = 4, F_PERM = 8, F_UNIQUE = 16, F_MODE = 32,
       F_OWNER = 64, F_GROUP = 128, F_UID = 256, F_GID = 512 };  /* SUPPORTED_FACTS order */

static PyObject *
mlsx_lines(PyObject *module, PyObject *args)
{
    PyObject *entries, *perm_file, *perm_dir, *owner, *group;
    int flags;
    if (!PyArg_ParseTuple(args, "OiUUOO:mlsx_lines", &entries, &flags, &perm_file, &perm_dir, &owner, &group))
        return NULL;
    PyObject *seq = PySequence_Fast(entries, "mlsx_lines: entries must be iterable");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    id_cache owners = {.used = 0}, groups = {.used = 0};
    long long last_minute = 0;
    int have_minute = 0;
    char stamp[64];
    PyObject *out = PyList_New(n);
    if (out == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = items[i];
        if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) != 10)
            goto fallback;
        PyObject *name = PyTuple_GET_ITEM(e, 0), *target = PyTuple_GET_ITEM(e, 9);
        PyObject *uid_obj = PyTuple_GET_ITEM(e, 3), *gid_obj = PyTuple_GET_ITEM(e, 4);
        long long mode, uid, gid, size, secs, dev;
        unsigned long long ino;
        if (!PyUnicode_CheckExact(name) || (target != Py_None && !PyUnicode_CheckExact(target))
            || !as_ll(PyTuple_GET_ITEM(e, 1), &mode) || mode < 0 || mode >= (1LL << 32)
            || !as_ll(uid_obj, &uid) || !as_ll(gid_obj, &gid) || !as_ll(PyTuple_GET_ITEM(e, 5), &size)
            || !whole_seconds(PyTuple_GET_ITEM(e, 6), &secs)
            || !as_ll(PyTuple_GET_ITEM(e, 8), &dev) || dev < 0 || !PyLong_CheckExact(PyTuple_GET_ITEM(e, 7)))
            goto fallback;
        ino = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(e, 7));
        if (ino == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            goto fallback;
        }
        unsigned long fmt = (unsigned long)mode & 0170000;
        int is_dir = fmt == 0040000;
        line_t l;
        l.n = 0;
        l.used = 0;
        l.overflow = 0;
        if (flags & F_TYPE) {
            if (is_dir)
                ADD_LIT(&l, "type=dir;");
            else if (fmt == 0100000)
                ADD_LIT(&l, "type=file;");
            else
                add_type_fact(&l, (unsigned long)mode, target);
        }
        if ((flags & F_SIZE) && !is_dir) {
            ADD_LIT(&l, "size=");
            add_int(&l, size, 0);
            ADD_LIT(&l, ";");
        }
        if (flags & F_MODIFY) {
            long long minute = floordiv(secs, 60);
            if (!have_minute || minute != last_minute) {
                time_t t = (time_t)(minute * 60);
                struct tm tm;
                if (gmtime_r(&t, &tm) == NULL || strftime(stamp, sizeof stamp, "%Y%m%d%H%M", &tm) == 0)
                    goto fallback;
                last_minute = minute;
                have_minute = 1;
            }
            ADD_LIT(&l, "modify=");
            add_text(&l, stamp, strlen(stamp));
            add_number(&l, (unsigned long long)(secs - minute * 60), 0, 10, 2, 0);
            ADD_LIT(&l, ";");
        }
        add_str(&l, is_dir ? perm_dir : perm_file);  /* "perm=...;" or "" */
        if (flags & F_UNIQUE) {
            ADD_LIT(&l, "unique=");
            add_number(&l, (unsigned long long)dev, 0, 16, 1, 0);
            ADD_LIT(&l, "U");
            add_number(&l, ino, 0, 16, 1, 0);
            ADD_LIT(&l, ";");
        }
        if (flags & F_MODE) {
            ADD_LIT(&l, "unix.mode=0");
            add_number(&l, (unsigned long long)mode & 07777, 0, 8, 3, 0);
            ADD_LIT(&l, ";");
        }
        if (flags & F_OWNER) {
            PyObject *f = id_fact(&owners, owner, "unix.owner=", uid_obj, uid);
            if (f == NULL)
                goto no_fact;
            add_str(&l, f);
        }
        if (flags & F_GROUP) {
            PyObject *f = id_fact(&groups, group, "unix.group=", gid_obj, gid);
            if (f == NULL)
                goto no_fact;
            add_str(&l, f);
        }
        if (flags & F_UID) {
            ADD_LIT(&l, "unix.uid=");
            add_int(&l, uid, 0);
            ADD_LIT(&l, ";");
        }
        if (flags & F_GID) {
            ADD_LIT(&l, "unix.gid=");
            add_int(&l, gid, 0);
            ADD_LIT(&l, ";");
        }
        ADD_LIT(&l, " ");
        add_str(&l, name);
        PyObject *line = join_line(&l);
        if (line == NULL) {
            if (PyErr_Occurred())
                goto fail;
            goto fallback;
        }
        PyList_SET_ITEM(out, i, line);
    }
    goto done;
no_fact:
    if (PyErr_Occurred())
        goto fail;
fallback:
    Py_CLEAR(out);
    out = Py_NewRef(Py_None);
    goto done;
fail:
    Py_CLEAR(out);
done:
    for (int k = 0; k < owners.used; k++)
        Py_DECREF(owners.s[k].text);
    for (int k = 0; k < groups.used; k++)
        Py_DECREF(groups.s[k].text);
    Py_DECREF(seq);
    return out;
}

static PyMethodDef methods[] = {
    {"ls_lines", ls_lines, METH_VARARGS,
     "ls_lines(entries, now_secs, localtime, owner, group) -> list[str] | None"},
    {"mlsx_lines", mlsx_lines, METH_VARARGS,
     "mlsx_lines(entries, fact_bits, perm_file, perm_dir, owner, group) -> list[str] | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "ftpwarden.proto._lsfmt",
    .m_doc = "Optional accelerator of listing.ls_lines and listing.mlsx_lines.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__lsfmt(void)
{
    return PyModule_Create(&module);
}

/* Streaming record counter of the data plane (connector.dataplane._recordcount).
 *
 * Counter(kind) with kind "json", "ndjson", "csv" or "none"; feed(buffer) any number of times
 * with chunks split anywhere (inside strings, escapes, CRLF, quoted fields), total() at any time.
 * The rules are written out in connector/dataplane/_records.py, whose pure-Python counter follows
 * exactly the same rules (the tests compare the two on arbitrary bytes). Plain C99 against the
 * CPython API; no state outside the object.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

enum { KIND_NONE = 0, KIND_JSON = 1, KIND_NDJSON = 2, KIND_CSV = 3 };

typedef struct {
    PyObject_HEAD
    int kind;
    unsigned long long count; /* JSON: values counted; NDJSON/CSV: lines ended with content */
    unsigned long long depth; /* JSON nesting depth outside strings */
    int in_str;               /* JSON: inside a string */
    int esc;                  /* JSON: the previous string byte was a backslash */
    int top_array;            /* JSON: the container at depth 1 is an array */
    int expect;               /* JSON: at depth 1 of a top-level array, an element may start */
    int scalar;               /* JSON: inside a top-level scalar (number, true, ...) */
    int content;              /* NDJSON/CSV: the current line has content */
    int in_quotes;            /* CSV: inside a double-quoted field */
} Counter;

/* byte classes */
static unsigned char STR_STOP[256];  /* JSON inside a string: '"' and '\\' */
static unsigned char SKIP_STOP[256]; /* JSON at depth >= 1 outside the element start: "[]{}, */
static unsigned char JSON_WS[256];   /* space, tab, LF, CR and bytes >= 0x80 (a UTF-8 BOM) */
static unsigned char ND_BLANK[256];  /* NDJSON: bytes that leave a line blank: space, tab, CR */
static unsigned char CSV_STOP[256];  /* CSV outside quotes with content: '"' and LF */

static void
init_tables(void)
{
    int c;
    memset(STR_STOP, 0, sizeof STR_STOP);
    memset(SKIP_STOP, 0, sizeof SKIP_STOP);
    memset(JSON_WS, 0, sizeof JSON_WS);
    memset(ND_BLANK, 0, sizeof ND_BLANK);
    memset(CSV_STOP, 0, sizeof CSV_STOP);
    STR_STOP['"'] = STR_STOP['\\'] = 1;
    SKIP_STOP['"'] = SKIP_STOP['['] = SKIP_STOP[']'] = SKIP_STOP['{'] = SKIP_STOP['}'] = SKIP_STOP[','] = 1;
    JSON_WS[' '] = JSON_WS['\t'] = JSON_WS['\n'] = JSON_WS['\r'] = 1;
    for (c = 0x80; c < 256; c++)
        JSON_WS[c] = 1;
    ND_BLANK[' '] = ND_BLANK['\t'] = ND_BLANK['\r'] = 1;
    CSV_STOP['"'] = CSV_STOP['\n'] = 1;
}

static void
feed_json(Counter *s, const unsigned char *p, const unsigned char *end)
{
    while (p < end) {
        unsigned char c;
        if (s->in_str) {
            if (s->esc) {
                s->esc = 0;
                p++;
                continue;
            }
            while (p < end && !STR_STOP[*p])
                p++;
            if (p == end)
                break;
            if (*p == '\\')
                s->esc = 1;
            else
                s->in_str = 0;
            p++;
            continue;
        }
        if (s->depth >= 2 || (s->depth == 1 && !(s->top_array && s->expect))) {
            /* only " [ ] { } , change the state here */
            while (p < end && !SKIP_STOP[*p])
                p++;
            if (p == end)
                break;
        }
        c = *p++;
        switch (c) {
        case '"':
            if (s->depth == 0) {
                s->count++;
                s->scalar = 0;
            } else if (s->depth == 1 && s->top_array && s->expect) {
                s->count++;
                s->expect = 0;
            }
            s->in_str = 1;
            break;
        case '[':
        case '{':
            if (s->depth == 0) {
                s->scalar = 0;
                s->top_array = (c == '[');
                s->expect = (c == '[');
                if (c == '{')
                    s->count++;
            } else if (s->depth == 1 && s->top_array && s->expect) {
                s->count++;
                s->expect = 0;
            }
            s->depth++;
            break;
        case ']':
        case '}':
            if (s->depth > 0)
                s->depth--;
            else
                s->scalar = 0;
            break;
        case ',':
            if (s->depth == 1 && s->top_array)
                s->expect = 1;
            else if (s->depth == 0)
                s->scalar = 0;
            break;
        default:
            if (JSON_WS[c]) {
                if (s->depth == 0)
                    s->scalar = 0;
            } else if (s->depth == 0) {
                if (!s->scalar) {
                    s->count++;
                    s->scalar = 1;
                }
            } else if (s->depth == 1 && s->top_array && s->expect) {
                s->count++;
                s->expect = 0;
            }
            break;
        }
    }
}

static void
feed_ndjson(Counter *s, const unsigned char *p, const unsigned char *end)
{
    while (p < end) {
        if (s->content) {
            const unsigned char *nl = memchr(p, '\n', (size_t)(end - p));
            if (nl == NULL)
                return;
            s->count++;
            s->content = 0;
            p = nl + 1;
        } else {
            unsigned char c = *p++;
            if (c == '\n')
                continue;
            if (!ND_BLANK[c])
                s->content = 1;
        }
    }
}

static void
feed_csv(Counter *s, const unsigned char *p, const unsigned char *end)
{
    while (p < end) {
        unsigned char c;
        if (s->in_quotes) {
            const unsigned char *q = memchr(p, '"', (size_t)(end - p));
            if (q == NULL)
                return;
            s->in_quotes = 0;
            p = q + 1;
            continue;
        }
        if (s->content) {
            while (p < end && !CSV_STOP[*p])
                p++;
            if (p == end)
                return;
        }
        c = *p++;
        if (c == '"') {
            s->in_quotes = 1;
            s->content = 1;
        } else if (c == '\n') {
            if (s->content) {
                s->count++;
                s->content = 0;
            }
        } else if (c != '\r') {
            s->content = 1;
        }
    }
}

static int
Counter_init(Counter *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"kind", NULL};
    const char *kind;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "s:Counter", kwlist, &kind))
        return -1;
    if (strcmp(kind, "json") == 0)
        self->kind = KIND_JSON;
    else if (strcmp(kind, "ndjson") == 0)
        self->kind = KIND_NDJSON;
    else if (strcmp(kind, "csv") == 0)
        self->kind = KIND_CSV;
    else if (strcmp(kind, "none") == 0)
        self->kind = KIND_NONE;
    else {
        PyErr_Format(PyExc_ValueError, "unknown record kind '%s' (json, ndjson, csv or none)", kind);
        return -1;
    }
    self->count = 0;
    self->depth = 0;
    self->in_str = self->esc = self->top_array = self->expect = self->scalar = 0;
    self->content = self->in_quotes = 0;
    return 0;
}

static void
feed_any(Counter *self, const unsigned char *p, const unsigned char *end)
{
    switch (self->kind) {
    case KIND_JSON:
        feed_json(self, p, end);
        break;
    case KIND_NDJSON:
        feed_ndjson(self, p, end);
        break;
    case KIND_CSV:
        feed_csv(self, p, end);
        break;
    default:
        break;
    }
}

static PyObject *
Counter_feed(Counter *self, PyObject *arg)
{
    Py_buffer view;
    const unsigned char *p, *end;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    p = (const unsigned char *)view.buf;
    end = p + view.len;
    /* A large chunk is scanned without the GIL (the buffer is held by the view, the counter's
       state is its own): other threads of the data plane run meanwhile. */
    if (view.len >= 65536) {
        Py_BEGIN_ALLOW_THREADS
        feed_any(self, p, end);
        Py_END_ALLOW_THREADS
    } else {
        feed_any(self, p, end);
    }
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyObject *
Counter_total(Counter *self, PyObject *Py_UNUSED(ignored))
{
    unsigned long long n;
    switch (self->kind) {
    case KIND_JSON:
        n = self->count;
        break;
    case KIND_NDJSON:
        n = self->count + (self->content ? 1 : 0);
        break;
    case KIND_CSV:
        n = self->count + (self->content ? 1 : 0);
        n = n > 0 ? n - 1 : 0; /* minus the header row */
        break;
    default:
        n = 0;
        break;
    }
    return PyLong_FromUnsignedLongLong(n);
}

static PyObject *
Counter_get_kind(Counter *self, void *Py_UNUSED(closure))
{
    static const char *names[] = {"none", "json", "ndjson", "csv"};
    return PyUnicode_FromString(names[self->kind]);
}

static PyMethodDef Counter_methods[] = {
    {"feed", (PyCFunction)Counter_feed, METH_O,
     "feed(data, /)\n--\n\nCount the records in the next chunk (any bytes-like object)."},
    {"total", (PyCFunction)Counter_total, METH_NOARGS,
     "total()\n--\n\nRecords counted so far, the last unterminated line or row included."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Counter_getset[] = {
    {"kind", (getter)Counter_get_kind, NULL, "json, ndjson, csv or none", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CounterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "connector.dataplane._recordcount.Counter",
    .tp_doc = PyDoc_STR("Counter(kind)\n--\n\nStreaming record counter: kind is json, ndjson, csv or none."),
    .tp_basicsize = sizeof(Counter),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Counter_init,
    .tp_methods = Counter_methods,
    .tp_getset = Counter_getset,
};

static struct PyModuleDef recordcount_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "connector.dataplane._recordcount",
    .m_doc = "Streaming record counter (C implementation of connector.dataplane._records).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__recordcount(void)
{
    PyObject *m;
    init_tables();
    if (PyType_Ready(&CounterType) < 0)
        return NULL;
    m = PyModule_Create(&recordcount_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CounterType);
    if (PyModule_AddObject(m, "Counter", (PyObject *)&CounterType) < 0) {
        Py_DECREF(&CounterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

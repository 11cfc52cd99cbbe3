/*
 * matching_native._book -- price-time priority limit order book for one symbol.
 *
 * Layout of this file:
 *   1. wire records (Cmd / Event / SnapOrder) and codes -- mirrored by the numpy
 *      dtypes in matching_native/__init__.py and documented in README.md;
 *   2. the pure matching core: integer ticks and lots only, no I/O, no Python
 *      objects, no per-order malloc in the steady state (order pool + free list,
 *      open-addressing hash oid -> slot, direct-indexed price ladder in lazily
 *      allocated chunks, 3-level bitmap of non-empty levels for best-price moves);
 *   3. the CPython binding (heap type `Book`, per-module state, METH_FASTCALL).
 *
 * Results leave the core only as Event records appended to a preallocated event
 * buffer (grown by doubling); Python reads them with Book.events().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <assert.h>
#include <stdlib.h>
#include <sys/mman.h>

/* ------------------------------------------------------------------ codes */

enum { OP_LIMIT = 1, OP_IOC = 2, OP_FOK = 3, OP_POST_ONLY = 4, OP_MARKET = 5,
       OP_CANCEL = 6, OP_AMEND = 7 };
enum { SIDE_BUY = 1, SIDE_SELL = 2 };
enum { STP_NONE = 0, STP_EXPIRE_TAKER = 1, STP_EXPIRE_MAKER = 2, STP_EXPIRE_BOTH = 3 };
enum { EV_FILL = 1, EV_RESTED = 2, EV_CANCELLED = 3, EV_AMENDED = 4, EV_REJECTED = 5 };
enum {
    R_NONE = 0,
    /* cancelled / expired */
    R_USER_CANCEL = 1, R_REMAINDER_EXPIRED = 2, R_FOK_NOT_FILLABLE = 3,
    R_STP_TAKER = 4, R_STP_MAKER = 5, R_POST_ONLY_WOULD_TAKE = 6, R_REDUCE_ONLY = 7,
    /* rejected */
    R_UNKNOWN_ORDER = 10, R_DUPLICATE_ORDER_ID = 11, R_BAD_QTY = 12,
    R_PRICE_OUT_OF_BAND = 13, R_AMEND_UNKNOWN_ORDER = 14, R_BAD_OP = 15,
    R_BAD_SIDE = 16, R_BAD_STP = 17, R_BOOK_FULL = 18, R_AMEND_WOULD_CROSS = 19
};
enum { F_MAKER_DONE = 1, F_TAKER_DONE = 2, F_PRIORITY_KEPT = 4 };
/* Cmd.flags (new orders) and SnapOrder.flags / Order.flags (resting orders); other bits ignored */
enum { CF_REDUCE_ONLY = 1 };

#define MAX_QTY ((int64_t)((1LL << 36) - 1))   /* per order, lots */
#define MAX_POSITION ((int64_t)1 << 62)          /* |lots| accepted by set_positions */
#define MAX_LEVELS (1u << 28)                    /* max_tick - min_tick + 1 */
#define MAX_ORDERS (1u << 26)                    /* pool capacity ceiling */
#define NIL UINT32_MAX
#define HT_INITIAL_MAX ((uint64_t)1 << 12) /* initial hash entries at most */
#define POS_INITIAL ((uint64_t)1 << 6)     /* initial position map entries */
#define OFF(T, f) ((Py_ssize_t)offsetof(T, f))

/* ------------------------------------------------------------ wire records */

typedef struct {            /* COMMAND_DTYPE, 40 bytes */
    uint8_t op, side, stp, flags, pad[4];
    int64_t oid, owner, price, qty;
} Cmd;

typedef struct {            /* EVENT_DTYPE, 72 bytes */
    uint8_t kind, reason, side, flags, op, pad[3];
    int64_t oid, owner, maker_oid, maker_owner, price, qty, leaves, maker_leaves;
} Event;

typedef struct {            /* ORDER_DTYPE (snapshot record), 40 bytes */
    int64_t oid, owner, price, qty;
    uint8_t side, flags, pad[6];
} SnapOrder;

typedef struct {            /* POSITION_DTYPE, 16 bytes; also a position map entry */
    int64_t owner, lots;     /* map: lots == 0 marks an empty entry */
} PosRec;

_Static_assert(sizeof(Cmd) == 40, "Cmd layout");
_Static_assert(sizeof(Event) == 72, "Event layout");
_Static_assert(sizeof(SnapOrder) == 40, "SnapOrder layout");
_Static_assert(sizeof(PosRec) == 16, "PosRec layout");

/* --------------------------------------------------------- internal state */

typedef struct {
    int64_t oid, owner, qty;     /* qty = open quantity */
    uint32_t next, prev;         /* FIFO links inside the level; next = free list link */
    uint32_t lvl;                /* price - min_tick */
    uint8_t side;
    uint8_t flags;               /* CF_REDUCE_ONLY */
} Order;

typedef struct {
    int64_t total;               /* sum of open qty */
    uint32_t head, tail, count;  /* head/tail meaningless when count == 0 */
    uint32_t ro;                 /* reduce-only orders in the level (FOK check fast path) */
} Level;

typedef struct {
    int64_t key;
    uint32_t val;                /* slot + 1, 0 = empty */
    uint32_t pad;
} HEntry;

_Static_assert(sizeof(Order) == 40, "Order slot stays 40 bytes");
_Static_assert(sizeof(Level) == 24, "Level stays 24 bytes");

#define CHUNK_BITS 10
#define CHUNK_LEVELS (1u << CHUNK_BITS)
#define CHUNK_MASK (CHUNK_LEVELS - 1)

typedef struct {
    int64_t min_tick, max_tick;
    uint32_t nlevels, nchunks;
    Level **chunks;                  /* lazily allocated, CHUNK_LEVELS each */
    uint64_t *bm[3];                 /* bit i of bm[0]: level i non-empty; bm[k+1] summarises bm[k] words */
    uint64_t bmw[3];                 /* words per bitmap level */
    int64_t best_bid, best_ask;      /* level index, -1 = none */
    Order *orders;
    uint32_t cap, free_head, count;
    HEntry *ht;
    uint64_t ht_mask;
    int ht_shift;
    PosRec *pos;                     /* owner -> signed position (lots), open addressing */
    uint64_t pos_mask, pos_count;
    int pos_shift;
    Event *ev;
    size_t ev_n, ev_cap;
    int ev_oom;
    Event ev_scratch;
} Core;

/* ------------------------------------------------------------ allocation */

/* Large arrays (pool, hash, events) are 2 MiB aligned and advised as huge pages:
   first-touch page faults are expensive (several microseconds each on some VMs),
   and the pool and hash are touched once at construction so the steady state
   never faults. */
#define BIG_ALIGN ((size_t)2 << 20)

static void *big_alloc(size_t size)
{
    void *p = NULL;
    if (size < BIG_ALIGN) return malloc(size ? size : 1);
    size_t r = (size + BIG_ALIGN - 1) & ~(BIG_ALIGN - 1);
    if (posix_memalign(&p, BIG_ALIGN, r) != 0) return NULL;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, r, MADV_HUGEPAGE); /* advisory only: failure just means 4 KiB pages */
#endif
    return p;
}

/* ------------------------------------------------------------------ bitmap */

static inline int ctz64(uint64_t x) { return __builtin_ctzll(x); }
static inline int msb64(uint64_t x) { return 63 - __builtin_clzll(x); }

static inline void bm_set(Core *b, uint32_t i)
{
    uint64_t w0 = i >> 6, w1 = w0 >> 6, w2 = w1 >> 6;
    uint64_t old = b->bm[0][w0];
    b->bm[0][w0] = old | (1ULL << (i & 63));
    if (old) return;
    old = b->bm[1][w1];
    b->bm[1][w1] = old | (1ULL << (w0 & 63));
    if (old) return;
    b->bm[2][w2] |= 1ULL << (w1 & 63);
}

static inline void bm_clear(Core *b, uint32_t i)
{
    uint64_t w0 = i >> 6, w1 = w0 >> 6, w2 = w1 >> 6;
    if ((b->bm[0][w0] &= ~(1ULL << (i & 63)))) return;
    if ((b->bm[1][w1] &= ~(1ULL << (w0 & 63)))) return;
    b->bm[2][w2] &= ~(1ULL << (w1 & 63));
}

static inline int bm_test(const Core *b, uint32_t i)
{
    return (int)((b->bm[0][i >> 6] >> (i & 63)) & 1);
}

/* lowest set index >= i, or -1 */
static int64_t bm_next(const Core *b, int64_t i)
{
    if (i < 0) i = 0;
    if ((uint64_t)i >= b->nlevels) return -1;
    uint64_t w0 = (uint64_t)i >> 6;
    uint64_t m = b->bm[0][w0] & (~0ULL << (i & 63));
    if (m) return (int64_t)((w0 << 6) | (uint64_t)ctz64(m));
    uint64_t i1 = w0 + 1;
    if (i1 >= b->bmw[0]) return -1;
    uint64_t w1 = i1 >> 6;
    m = b->bm[1][w1] & (~0ULL << (i1 & 63));
    if (!m) {
        uint64_t i2 = w1 + 1;
        if (i2 >= b->bmw[1]) return -1;
        uint64_t w2 = i2 >> 6;
        m = b->bm[2][w2] & (~0ULL << (i2 & 63));
        while (!m) {
            if (++w2 >= b->bmw[2]) return -1;
            m = b->bm[2][w2];
        }
        w1 = (w2 << 6) | (uint64_t)ctz64(m);
        m = b->bm[1][w1];
    }
    w0 = (w1 << 6) | (uint64_t)ctz64(m);
    return (int64_t)((w0 << 6) | (uint64_t)ctz64(b->bm[0][w0]));
}

/* highest set index <= i, or -1 */
static int64_t bm_prev(const Core *b, int64_t i)
{
    if (i < 0) return -1;
    if ((uint64_t)i >= b->nlevels) i = (int64_t)b->nlevels - 1;
    uint64_t w0 = (uint64_t)i >> 6;
    uint64_t m = b->bm[0][w0] & (~0ULL >> (63 - (i & 63)));
    if (m) return (int64_t)((w0 << 6) | (uint64_t)msb64(m));
    if (w0 == 0) return -1;
    uint64_t i1 = w0 - 1, w1 = i1 >> 6;
    m = b->bm[1][w1] & (~0ULL >> (63 - (i1 & 63)));
    if (!m) {
        if (w1 == 0) return -1;
        uint64_t i2 = w1 - 1, w2 = i2 >> 6;
        m = b->bm[2][w2] & (~0ULL >> (63 - (i2 & 63)));
        while (!m) {
            if (w2 == 0) return -1;
            m = b->bm[2][--w2];
        }
        w1 = (w2 << 6) | (uint64_t)msb64(m);
        m = b->bm[1][w1];
    }
    w0 = (w1 << 6) | (uint64_t)msb64(m);
    return (int64_t)((w0 << 6) | (uint64_t)msb64(b->bm[0][w0]));
}

/* ------------------------------------------------------------ price ladder */

static inline Level *lv(const Core *b, uint32_t i)
{
    return &b->chunks[i >> CHUNK_BITS][i & CHUNK_MASK];
}

static int ensure_chunk(Core *b, uint32_t i)
{
    uint32_t c = i >> CHUNK_BITS;
    if (b->chunks[c]) return 0;
    b->chunks[c] = (Level *)calloc(CHUNK_LEVELS, sizeof(Level));
    return b->chunks[c] ? 0 : -1;
}

/* -------------------------------------------------------------- hash table */

static inline uint64_t hslot(int64_t k, int shift)
{
    return ((uint64_t)k * 0x9E3779B97F4A7C15ULL) >> shift;
}

static inline uint32_t ht_find(const Core *b, int64_t oid)
{
    uint64_t i = hslot(oid, b->ht_shift);
    for (;;) {
        const HEntry *e = &b->ht[i];
        if (e->val == 0) return NIL;
        if (e->key == oid) return e->val - 1;
        i = (i + 1) & b->ht_mask;
    }
}

/* Like ht_find; *at receives the index of the entry found or, if absent, of the
   empty entry that ended the probe (where order_rest_at inserts it, as long as
   the table has not changed in between). */
static inline uint32_t ht_lookup(const Core *b, int64_t oid, uint64_t *at)
{
    const HEntry *ht = b->ht;
    uint64_t mask = b->ht_mask, i = hslot(oid, b->ht_shift);
    for (;;) {
        uint32_t v = ht[i].val;
        if (v == 0 || ht[i].key == oid) {
            *at = i;
            return v - 1;   /* NIL when v == 0 */
        }
        i = (i + 1) & mask;
    }
}

static inline void ht_put(HEntry *ht, uint64_t mask, int shift, int64_t oid, uint32_t slot)
{
    uint64_t i = hslot(oid, shift);
    while (ht[i].val) i = (i + 1) & mask;
    ht[i].key = oid;
    ht[i].val = slot + 1;
}

/* Remove the entry at index i: backward-shift deletion, no tombstones. */
static inline void ht_remove_at(Core *b, uint64_t i)
{
    HEntry *ht = b->ht;
    uint64_t mask = b->ht_mask, j = i;
    int shift = b->ht_shift;
    for (;;) {
        j = (j + 1) & mask;
        if (ht[j].val == 0) break;
        uint64_t k = hslot(ht[j].key, shift);
        if (((j - k) & mask) >= ((j - i) & mask)) {
            ht[i] = ht[j];
            i = j;
        }
    }
    ht[i].val = 0;
    ht[i].key = 0;
}

static inline void ht_remove(Core *b, int64_t oid)
{
    const HEntry *ht = b->ht;
    uint64_t mask = b->ht_mask, i = hslot(oid, b->ht_shift);
    while (ht[i].key != oid || ht[i].val == 0) {
        assert(ht[i].val != 0);
        i = (i + 1) & mask;
    }
    ht_remove_at(b, i);
}

static int ht_alloc(uint64_t want, HEntry **out, uint64_t *mask, int *shift)
{
    int bits = 4;
    while ((1ULL << bits) < want) bits++;
    HEntry *t = (HEntry *)big_alloc(((size_t)1 << bits) * sizeof(HEntry));
    if (!t) return -1;
    memset(t, 0, ((size_t)1 << bits) * sizeof(HEntry));
    *out = t;
    *mask = (1ULL << bits) - 1;
    *shift = 64 - bits;
    return 0;
}

/* --------------------------------------------------------------- order pool */

static int pool_grow(Core *b)
{
    if (b->cap >= MAX_ORDERS) return -1;
    uint32_t ncap = b->cap * 2;
    if (ncap > MAX_ORDERS) ncap = MAX_ORDERS;
    Order *no = (Order *)big_alloc((size_t)ncap * sizeof(Order));
    if (!no) return -1;
    memcpy(no, b->orders, (size_t)b->cap * sizeof(Order));
    free(b->orders);
    b->orders = no;
    for (uint32_t s = b->cap; s < ncap; s++) no[s].next = (s + 1 < ncap) ? s + 1 : b->free_head;
    b->free_head = b->cap;
    b->cap = ncap;
    return 0;
}

/* The hash is sized by the number of resting orders (load <= 1/2), not by the
   pool capacity: a table much larger than the live set turns every lookup into
   a cache and TLB miss. It doubles (one rehash) when the load would pass 1/2. */
static int ht_grow(Core *b)
{
    HEntry *nht;
    uint64_t nmask;
    int nshift;
    if (ht_alloc((b->ht_mask + 1) * 2, &nht, &nmask, &nshift) < 0) return -1;
    for (uint64_t i = 0; i <= b->ht_mask; i++)
        if (b->ht[i].val) ht_put(nht, nmask, nshift, b->ht[i].key, b->ht[i].val - 1);
    free(b->ht);
    b->ht = nht;
    b->ht_mask = nmask;
    b->ht_shift = nshift;
    return 0;
}

/* Room for one more resting order: a free pool slot and hash load <= 1/2. */
static inline int slot_ensure(Core *b)
{
    if (b->free_head == NIL && pool_grow(b) < 0) return -1;
    if (((uint64_t)b->count + 1) * 2 > b->ht_mask + 1 && ht_grow(b) < 0) return -1;
    return 0;
}

/* ------------------------------------------------------------ position map */

/* Signed position in lots per owner: open addressing (linear probing, Fibonacci
   hashing, backward-shift deletion). Only non-zero positions are stored, so
   lots == 0 marks an empty entry and an owner whose position returns to 0 leaves
   the map. Load <= 1/2, doubling: no allocation per fill in the steady state. */

/* The entry of `owner`, or the empty entry where it would be inserted. */
static inline PosRec *pos_slot(const Core *b, int64_t owner)
{
    uint64_t i = hslot(owner, b->pos_shift);
    for (;;) {
        PosRec *e = &b->pos[i];
        if (e->lots == 0 || e->owner == owner) return e;
        i = (i + 1) & b->pos_mask;
    }
}

static inline int64_t pos_get(const Core *b, int64_t owner)
{
    return pos_slot(b, owner)->lots;
}

/* Lots an order of `side` may still reduce given position p: the long position
   for a SELL, the short position for a BUY, else 0. */
static inline int64_t reducible_of(int64_t p, uint8_t side)
{
    if (side == SIDE_SELL) return p > 0 ? p : 0;
    return p < 0 ? (p == INT64_MIN ? INT64_MAX : -p) : 0;
}

/* position(owner) + adj, wrapping like pos_add */
static inline int64_t pos_plus(const Core *b, int64_t owner, int64_t adj)
{
    return (int64_t)((uint64_t)pos_get(b, owner) + (uint64_t)adj);
}

static inline int64_t reducible(const Core *b, int64_t owner, uint8_t side)
{
    return reducible_of(pos_get(b, owner), side);
}

__attribute__((noinline)) static void pos_delete(Core *b, uint64_t i)
{
    uint64_t mask = b->pos_mask, j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (b->pos[j].lots == 0) break;
        uint64_t k = hslot(b->pos[j].owner, b->pos_shift);
        if (((j - k) & mask) >= ((j - i) & mask)) {
            b->pos[i] = b->pos[j];
            i = j;
        }
    }
    b->pos[i].owner = 0;
    b->pos[i].lots = 0;
    b->pos_count--;
}

static int pos_alloc(uint64_t want, PosRec **out, uint64_t *mask, int *shift)
{
    int bits = 4;
    while ((1ULL << bits) < want) bits++;
    PosRec *t = (PosRec *)calloc((size_t)1 << bits, sizeof(PosRec));
    if (!t) return -1;
    *out = t;
    *mask = (1ULL << bits) - 1;
    *shift = 64 - bits;
    return 0;
}

static int pos_grow(Core *b)
{
    PosRec *nt;
    uint64_t nmask;
    int nshift;
    if (pos_alloc((b->pos_mask + 1) * 2, &nt, &nmask, &nshift) < 0) return -1;
    for (uint64_t i = 0; i <= b->pos_mask; i++) {
        const PosRec *e = &b->pos[i];
        if (e->lots == 0) continue;
        uint64_t j = hslot(e->owner, nshift);
        while (nt[j].lots) j = (j + 1) & nmask;
        nt[j] = *e;
    }
    free(b->pos);
    b->pos = nt;
    b->pos_mask = nmask;
    b->pos_shift = nshift;
    return 0;
}

/* Set the position of `owner` (0 removes it). -1 if the map could not grow
   (the position is still stored while the table has a free entry left). */
__attribute__((noinline)) static int pos_set(Core *b, int64_t owner, int64_t lots)
{
    PosRec *e = pos_slot(b, owner);
    if (e->lots != 0) {
        if (lots != 0) e->lots = lots;
        else pos_delete(b, (uint64_t)(e - b->pos));
        return 0;
    }
    if (lots == 0) return 0;
    int rc = 0;
    if ((b->pos_count + 1) * 2 > b->pos_mask + 1) {
        if (pos_grow(b) == 0) {
            e = pos_slot(b, owner);
        } else {
            rc = -1;
            if (b->pos_count + 2 > b->pos_mask + 1) return -1; /* keep one empty entry */
        }
    }
    e->owner = owner;
    e->lots = lots;
    b->pos_count++;
    return rc;
}

/* position(owner) += delta (wrapping int64 arithmetic, never UB) */
static inline void pos_add(Core *b, int64_t owner, int64_t delta)
{
    PosRec *e = pos_slot(b, owner);
    int64_t v = (int64_t)((uint64_t)e->lots + (uint64_t)delta);
    if (__builtin_expect(e->lots != 0 && v != 0, 1)) {
        e->lots = v;
        return;
    }
    if (e->lots != 0) pos_delete(b, (uint64_t)(e - b->pos));
    else if (pos_set(b, owner, delta) < 0) b->ev_oom = 1; /* MemoryError after the call */
}

/* ------------------------------------------------------------------ events */

static int ev_reserve(Core *b, size_t extra)
{
    if (b->ev_n + extra <= b->ev_cap) return 0;
    size_t ncap = b->ev_cap ? b->ev_cap : 1024;
    while (ncap < b->ev_n + extra) ncap *= 2;
    Event *ne = (Event *)big_alloc(ncap * sizeof(Event));
    if (!ne) return -1;
    if (b->ev_n) memcpy(ne, b->ev, b->ev_n * sizeof(Event));
    free(b->ev);
    b->ev = ne;
    b->ev_cap = ncap;
    return 0;
}

/* The buffer is full: grow it (or, out of memory, hand out the scratch record
   and report MemoryError after the call). */
__attribute__((noinline, cold)) static Event *ev_next_slow(Core *b)
{
    if (ev_reserve(b, 1) < 0) {
        b->ev_oom = 1;
        return &b->ev_scratch;
    }
    return &b->ev[b->ev_n++];
}

static inline Event *ev_next(Core *b)
{
    size_t n = b->ev_n;
    if (__builtin_expect(n == b->ev_cap, 0)) return ev_next_slow(b);
    b->ev_n = n + 1;
    return &b->ev[n];
}

/* Append one whole event record (every field written once, padding zero). */
static inline Event *ev_put(Core *b, uint8_t kind, uint8_t reason, uint8_t side, uint8_t flags,
                            uint8_t op, int64_t oid, int64_t owner, int64_t maker_oid,
                            int64_t maker_owner, int64_t price, int64_t qty, int64_t leaves,
                            int64_t maker_leaves)
{
    Event *e = ev_next(b);
    *e = (Event){.kind = kind, .reason = reason, .side = side, .flags = flags, .op = op,
                 .oid = oid, .owner = owner, .maker_oid = maker_oid, .maker_owner = maker_owner,
                 .price = price, .qty = qty, .leaves = leaves, .maker_leaves = maker_leaves};
    return e;
}

__attribute__((noinline)) static void ev_reject(Core *b, const Cmd *c, uint8_t reason)
{
    ev_put(b, EV_REJECTED, reason, c->side, 0, c->op, c->oid, c->owner, 0, 0, c->price, c->qty, 0, 0);
}

static inline Event *ev_cancelled(Core *b, uint8_t op, uint8_t reason, uint8_t side, int64_t oid,
                                  int64_t owner, int64_t price, int64_t qty)
{
    return ev_put(b, EV_CANCELLED, reason, side, 0, op, oid, owner, 0, 0, price, qty, 0, 0);
}

/* ------------------------------------------------------------------- core */

static void core_free(Core *b)
{
    if (b->chunks) {
        for (uint32_t c = 0; c < b->nchunks; c++) free(b->chunks[c]);
        free(b->chunks);
        b->chunks = NULL;
    }
    for (int k = 0; k < 3; k++) {
        free(b->bm[k]);
        b->bm[k] = NULL;
    }
    free(b->orders);
    b->orders = NULL;
    free(b->ht);
    b->ht = NULL;
    free(b->pos);
    b->pos = NULL;
    free(b->ev);
    b->ev = NULL;
}

static void core_reset_orders(Core *b)
{
    for (uint32_t s = 0; s < b->cap; s++) b->orders[s].next = (s + 1 < b->cap) ? s + 1 : NIL;
    b->free_head = b->cap ? 0 : NIL;
    b->count = 0;
    b->best_bid = b->best_ask = -1;
}

/* returns 0, -1 on allocation failure (caller frees with core_free) */
static int core_init(Core *b, int64_t min_tick, int64_t max_tick, uint32_t cap)
{
    memset(b, 0, sizeof(*b));
    b->min_tick = min_tick;
    b->max_tick = max_tick;
    b->nlevels = (uint32_t)(max_tick - min_tick + 1);
    b->nchunks = (b->nlevels + CHUNK_LEVELS - 1) >> CHUNK_BITS;
    b->chunks = (Level **)calloc(b->nchunks, sizeof(Level *));
    if (!b->chunks) return -1;
    b->bmw[0] = (b->nlevels + 63) / 64;
    b->bmw[1] = (b->bmw[0] + 63) / 64;
    b->bmw[2] = (b->bmw[1] + 63) / 64;
    for (int k = 0; k < 3; k++) {
        b->bm[k] = (uint64_t *)calloc(b->bmw[k], sizeof(uint64_t));
        if (!b->bm[k]) return -1;
    }
    if (cap < 16) cap = 16;
    if (cap > MAX_ORDERS) cap = MAX_ORDERS;
    b->cap = cap;
    b->orders = (Order *)big_alloc((size_t)cap * sizeof(Order));
    if (!b->orders) return -1;
    uint64_t want = (uint64_t)cap * 2;
    if (want > HT_INITIAL_MAX) want = HT_INITIAL_MAX;
    if (ht_alloc(want, &b->ht, &b->ht_mask, &b->ht_shift) < 0) return -1;
    if (pos_alloc(POS_INITIAL, &b->pos, &b->pos_mask, &b->pos_shift) < 0) return -1;
    core_reset_orders(b);
    /* Event buffer: 1024 records, more for a book presized for many orders (up to
       16384, 1.1 MiB), so that typical batches never grow it; written once now
       so that its pages never fault inside a call. */
    size_t ev0 = cap / 64;
    if (ev0 < 1024) ev0 = 1024;
    if (ev0 > 16384) ev0 = 16384;
    if (ev_reserve(b, ev0) < 0) return -1;
    memset(b->ev, 0, b->ev_cap * sizeof(Event));
    return 0;
}

/* remove every resting order, keep the allocations */
static void core_clear(Core *b)
{
    for (uint32_t c = 0; c < b->nchunks; c++)
        if (b->chunks[c]) memset(b->chunks[c], 0, CHUNK_LEVELS * sizeof(Level));
    for (int k = 0; k < 3; k++) memset(b->bm[k], 0, b->bmw[k] * sizeof(uint64_t));
    memset(b->ht, 0, (b->ht_mask + 1) * sizeof(HEntry));
    core_reset_orders(b);
}

/* forget every position, keep the allocation */
static void core_clear_positions(Core *b)
{
    memset(b->pos, 0, (b->pos_mask + 1) * sizeof(PosRec));
    b->pos_count = 0;
}

/* Append slot s (fields oid/owner/qty/side/lvl/flags set) to the tail of its level.
   The level's chunk must exist. */
static inline void level_append(Core *b, uint32_t s)
{
    Order *orders = b->orders;
    Order *o = &orders[s];
    uint32_t i = o->lvl;
    Level *L = lv(b, i);
    o->next = NIL;
    if (L->count == 0) {
        o->prev = NIL;
        L->head = s;
        bm_set(b, i);
        if (o->side == SIDE_BUY) {
            if ((int64_t)i > b->best_bid) b->best_bid = i;
        } else {
            if ((uint64_t)i < (uint64_t)b->best_ask) b->best_ask = i;   /* -1 (none) compares above */
        }
    } else {
        uint32_t t = L->tail;
        o->prev = t;
        orders[t].next = s;
    }
    L->tail = s;
    L->count++;
    L->total += o->qty;
    L->ro += o->flags;   /* flags is 0 or CF_REDUCE_ONLY (1) */
}

/* Level i (of `side`) just became empty: clear its bit and move the best price. */
static inline void level_emptied(Core *b, uint32_t i, uint8_t side)
{
    bm_clear(b, i);
    if (side == SIDE_BUY) {
        if ((int64_t)i == b->best_bid) b->best_bid = bm_prev(b, (int64_t)i - 1);
    } else {
        if ((int64_t)i == b->best_ask) b->best_ask = bm_next(b, (int64_t)i + 1);
    }
}

/* Unlink slot s from its level (slot and hash entry stay). */
static inline void level_unlink(Core *b, uint32_t s)
{
    Order *orders = b->orders;
    Order *o = &orders[s];
    uint32_t i = o->lvl, prev = o->prev, next = o->next;
    Level *L = lv(b, i);
    if (prev != NIL) orders[prev].next = next;
    else L->head = next;
    if (next != NIL) orders[next].prev = prev;
    else L->tail = prev;
    L->total -= o->qty;
    L->ro -= o->flags;
    if (--L->count == 0) level_emptied(b, i, o->side);
}

/* Return slot s to the free list. */
static inline void slot_free(Core *b, uint32_t s)
{
    b->orders[s].next = b->free_head;
    b->free_head = s;
    b->count--;
}

/* Remove order s from the book entirely. */
static inline void order_remove(Core *b, uint32_t s)
{
    level_unlink(b, s);
    ht_remove(b, b->orders[s].oid);
    slot_free(b, s);
}

/* Rest a new order (slot_ensure and ensure_chunk already succeeded); its hash
   entry goes to index hi, the empty entry that ended ht_lookup(oid) on the
   current table. */
static inline void order_rest_at(Core *b, uint8_t side, int64_t oid, int64_t owner, uint32_t lvl,
                                 int64_t qty, uint8_t flags, uint64_t hi)
{
    uint32_t s = b->free_head;
    Order *o = &b->orders[s];
    b->free_head = o->next;
    o->oid = oid;
    o->owner = owner;
    o->qty = qty;
    o->lvl = lvl;
    o->side = side;
    o->flags = flags & CF_REDUCE_ONLY;
    level_append(b, s);
    b->ht[hi].key = oid;
    b->ht[hi].val = s + 1;
    b->count++;
}

/* Rest a new order (slot_ensure and ensure_chunk already succeeded). */
static void order_rest(Core *b, uint8_t side, int64_t oid, int64_t owner, uint32_t lvl, int64_t qty,
                       uint8_t flags)
{
    uint64_t hi;
    (void)ht_lookup(b, oid, &hi);
    order_rest_at(b, side, oid, owner, lvl, qty, flags, hi);
}

/* Would an order of `side` at level lvl (>= 0) reach the opposite best?
   Branch-free: the side of a command is unpredictable. A BUY reaches an ask at or
   below it (no ask: -1 as unsigned is above any level); a SELL a bid at or above
   it (no bid: -1 is below any level). */
static inline int crosses(const Core *b, uint8_t side, int64_t lvl)
{
    int buy_x = (uint64_t)b->best_ask <= (uint64_t)lvl;
    int sell_x = lvl <= b->best_bid;
    int buy = side == SIDE_BUY;
    return (buy & buy_x) | ((buy ^ 1) & sell_x);
}

/* Could a taker of `qty` be filled completely within limit level `lim`?
   Reduce-only makers count as 0 lots (the sweep may skip or cut them), so the
   answer is conservative: a FOK that passes is filled completely. */
static int fok_fillable(const Core *b, const Cmd *c, int64_t lim)
{
    int64_t need = c->qty;
    int buy = c->side == SIDE_BUY;
    int64_t i = buy ? b->best_ask : b->best_bid;
    while (i >= 0 && (buy ? i <= lim : i >= lim)) {
        const Level *L = lv(b, (uint32_t)i);
        if (c->stp == STP_NONE && L->ro == 0) {
            if (L->total >= need) return 1;
            need -= L->total;
        } else {
            for (uint32_t s = L->head; s != NIL; s = b->orders[s].next) {
                const Order *o = &b->orders[s];
                if (c->stp != STP_NONE && o->owner == c->owner) {
                    if (c->stp == STP_EXPIRE_MAKER) continue;
                    return 0;
                }
                if (o->flags & CF_REDUCE_ONLY) continue;
                if (o->qty >= need) return 1;
                need -= o->qty;
            }
        }
        i = buy ? bm_next(b, i + 1) : bm_prev(b, i - 1);
    }
    return 0;
}

/* Match taker `c` with `qty` lots against the opposite side up to limit level
   `lim`. Returns the remaining qty; *expired set if STP expired the taker.
   Every fill moves the positions of both owners; a reduce-only maker fills at
   most what its owner may still reduce and is removed (CANCELLED REDUCE_ONLY)
   when that is 0. The taker's own position change is summed in `tdelta` and
   stored once at the end (one map access per fill instead of two); the only
   reader of it during the sweep, a reduce-only maker of the taker's own owner,
   adds it in.
   The outer loop finds the best opposite level, the inner one takes its makers
   head first while it has any (the best price only moves when a level empties;
   the pool and the ladder are never reallocated during a sweep). */
__attribute__((noinline)) static int64_t match(Core *b, const Cmd *c, int64_t qty, int64_t lim, int *expired)
{
    const int buy = c->side == SIDE_BUY;
    const uint8_t op = c->op, cside = c->side, stp = c->stp;
    const int64_t coid = c->oid, cowner = c->owner, min_tick = b->min_tick;
    int64_t rem = qty, tdelta = 0;
    while (rem > 0) {
        int64_t best = buy ? b->best_ask : b->best_bid;
        /* lim >= 0: a BUY stops at no ask (-1 as unsigned is above any lim) or an
           ask above lim; a SELL at no bid (-1 < lim) or a bid below lim */
        if (buy ? (uint64_t)best > (uint64_t)lim : best < lim) break;
        Level *L = lv(b, (uint32_t)best);
        const int64_t px = min_tick + best;
        do {
            uint32_t s = L->head;
            Order *o = &b->orders[s];
            const int64_t mowner = o->owner;
            if (__builtin_expect(stp != STP_NONE, 0) && mowner == cowner) {
                if (stp != STP_EXPIRE_TAKER) {
                    ev_cancelled(b, op, R_STP_MAKER, o->side, o->oid, mowner, px, o->qty);
                    order_remove(b, s);
                }
                if (stp != STP_EXPIRE_MAKER) {
                    ev_cancelled(b, op, R_STP_TAKER, cside, coid, cowner, c->price, rem);
                    *expired = 1;
                    goto done;
                }
                continue;
            }
            int64_t oq = o->qty;
            int64_t q = rem < oq ? rem : oq;
            if (__builtin_expect(o->flags != 0, 0)) {   /* reduce-only maker */
                int64_t allowed = reducible_of(pos_plus(b, mowner, mowner == cowner ? tdelta : 0), o->side);
                if (allowed == 0) {
                    ev_cancelled(b, op, R_REDUCE_ONLY, o->side, o->oid, mowner, px, oq);
                    order_remove(b, s);
                    continue;
                }
                if (allowed < q) q = allowed;
            }
            rem -= q;
            oq -= q;
            o->qty = oq;
            L->total -= q;
            if (mowner != cowner) {
                int64_t d = buy ? q : -q;
                tdelta += d;
                pos_add(b, mowner, -d);
            }
            const int64_t moid = o->oid;
            ev_put(b, EV_FILL, R_NONE, cside,
                   (uint8_t)((oq == 0 ? F_MAKER_DONE : 0) | (rem == 0 ? F_TAKER_DONE : 0)), op,
                   coid, cowner, moid, mowner, px, q, rem, oq);
            if (oq == 0) {
                /* the maker is the level's head: pop it */
                uint32_t next = o->next;
                L->head = next;
                L->ro -= o->flags;
                if (next != NIL) b->orders[next].prev = NIL;
                else L->tail = NIL;
                if (--L->count == 0) level_emptied(b, (uint32_t)best, o->side);
                ht_remove(b, moid);
                slot_free(b, s);
            } else if (__builtin_expect(o->flags != 0, 0) &&
                       reducible_of(pos_plus(b, mowner, mowner == cowner ? tdelta : 0), o->side) == 0) {
                ev_cancelled(b, op, R_REDUCE_ONLY, o->side, moid, mowner, px, oq);
                order_remove(b, s);
            }
        } while (rem > 0 && L->count != 0);
    }
done:
    if (tdelta) pos_add(b, cowner, tdelta);
    return rem;
}

/* The first failing check of a new order that failed one of side, stp, qty,
   price band (in that order). */
__attribute__((noinline, cold)) static void new_reject(Core *b, const Cmd *c)
{
    uint8_t reason;
    if (c->side != SIDE_BUY && c->side != SIDE_SELL) reason = R_BAD_SIDE;
    else if (c->stp > STP_EXPIRE_BOTH) reason = R_BAD_STP;
    else if (c->qty <= 0 || c->qty > MAX_QTY) reason = R_BAD_QTY;
    else reason = R_PRICE_OUT_OF_BAND;
    ev_reject(b, c, reason);
}

/* A reduce-only taker keeps at most what its owner may reduce. Returns the qty
   it goes on with, 0 if it is finished (events written). */
__attribute__((noinline)) static int64_t reduce_only_taker(Core *b, const Cmd *c, int64_t qty)
{
    int64_t allowed = reducible(b, c->owner, c->side);
    if (qty <= allowed) return qty;
    if (c->op == OP_FOK) {
        ev_cancelled(b, c->op, R_FOK_NOT_FILLABLE, c->side, c->oid, c->owner, c->price, qty);
        return 0;
    }
    Event *e = ev_cancelled(b, c->op, R_REDUCE_ONLY, c->side, c->oid, c->owner, c->price, qty - allowed);
    e->leaves = allowed;
    return allowed;
}

static void cmd_new(Core *b, const Cmd *c)
{
    const int64_t price = c->price;
    const uint8_t side = c->side, op = c->op;
    if (__builtin_expect((uint8_t)(side - 1) > 1 || c->stp > STP_EXPIRE_BOTH ||
                         (uint64_t)c->qty - 1 >= (uint64_t)MAX_QTY ||
                         (price < b->min_tick) | (price > b->max_tick), 0)) {
        new_reject(b, c);
        return;
    }
    uint64_t hi;
    if (__builtin_expect(ht_lookup(b, c->oid, &hi) != NIL, 0)) {
        ev_reject(b, c, R_DUPLICATE_ORDER_ID);
        return;
    }
    const uint32_t lvl = (uint32_t)(price - b->min_tick);
    const int rests = op == OP_LIMIT || op == OP_POST_ONLY;
    int hi_valid = 1;   /* hi is still the insertion point of c->oid */
    int short_of_room = (b->free_head == NIL) | (((uint64_t)b->count + 1) * 2 > b->ht_mask + 1) |
                        (b->chunks[lvl >> CHUNK_BITS] == NULL);
    if (__builtin_expect(rests & short_of_room, 0)) {
        if (slot_ensure(b) < 0 || ensure_chunk(b, lvl) < 0) {
            ev_reject(b, c, R_BOOK_FULL);
            return;
        }
        hi_valid = 0;   /* the hash may have been rebuilt */
    }
    int64_t qty = c->qty;
    if (__builtin_expect(c->flags & CF_REDUCE_ONLY, 0) && (qty = reduce_only_taker(b, c, qty)) == 0)
        return;
    const int cross = crosses(b, side, lvl);
    if (op == OP_POST_ONLY && cross) {
        ev_cancelled(b, op, R_POST_ONLY_WOULD_TAKE, side, c->oid, c->owner, price, qty);
        return;
    }
    if (op == OP_FOK && !fok_fillable(b, c, lvl)) {
        ev_cancelled(b, op, R_FOK_NOT_FILLABLE, side, c->oid, c->owner, price, qty);
        return;
    }
    int64_t rem = qty;
    if (cross) {
        int expired = 0;
        rem = match(b, c, qty, lvl, &expired);
        if (rem == 0 || expired) return;
        hi_valid = 0;   /* makers left the hash */
    }
    if (rests) {
        if (!hi_valid) (void)ht_lookup(b, c->oid, &hi);
        order_rest_at(b, side, c->oid, c->owner, lvl, rem, c->flags, hi);
        ev_put(b, EV_RESTED, R_NONE, side, 0, op, c->oid, c->owner, 0, 0, price, rem, rem, 0);
    } else {
        ev_cancelled(b, op, R_REMAINDER_EXPIRED, side, c->oid, c->owner, price, rem);
    }
}

static void cmd_cancel(Core *b, const Cmd *c)
{
    uint64_t hi;
    uint32_t s = ht_lookup(b, c->oid, &hi);
    if (__builtin_expect(s == NIL, 0)) {
        ev_reject(b, c, R_UNKNOWN_ORDER);
        return;
    }
    Order *o = &b->orders[s];
    ev_cancelled(b, c->op, R_USER_CANCEL, o->side, o->oid, o->owner, b->min_tick + (int64_t)o->lvl, o->qty);
    level_unlink(b, s);
    ht_remove_at(b, hi);
    slot_free(b, s);
}

static void cmd_amend(Core *b, const Cmd *c)
{
    if (c->qty <= 0 || c->qty > MAX_QTY) { ev_reject(b, c, R_BAD_QTY); return; }
    if (c->price != 0 && (c->price < b->min_tick || c->price > b->max_tick)) {
        ev_reject(b, c, R_PRICE_OUT_OF_BAND);
        return;
    }
    uint32_t s = ht_find(b, c->oid);
    if (s == NIL) { ev_reject(b, c, R_AMEND_UNKNOWN_ORDER); return; }
    Order *o = &b->orders[s];
    uint32_t nl = c->price == 0 ? o->lvl : (uint32_t)(c->price - b->min_tick);
    uint8_t flags = 0;
    if (nl == o->lvl && c->qty <= o->qty) {
        lv(b, nl)->total -= o->qty - c->qty;
        o->qty = c->qty;
        flags = F_PRIORITY_KEPT;
    } else {
        if (nl != o->lvl && crosses(b, o->side, nl)) { ev_reject(b, c, R_AMEND_WOULD_CROSS); return; }
        if (ensure_chunk(b, nl) < 0) { ev_reject(b, c, R_BOOK_FULL); return; }
        level_unlink(b, s);
        o->lvl = nl;
        o->qty = c->qty;
        level_append(b, s);
    }
    ev_put(b, EV_AMENDED, R_NONE, o->side, flags, c->op, o->oid, o->owner, 0, 0,
           b->min_tick + (int64_t)nl, o->qty, o->qty, 0);
}

/* Batch prefetching: the command record i+PF_CMD, the hash line of command
   i+PF_HASH and, for cancels and amends when the book holds at least
   PF_SLOT_MIN_ORDERS orders, the order slot of command i+PF_SLOT are requested
   ahead of use so the cache misses of consecutive commands overlap. Pure hints:
   no effect on results. */
#ifndef PF_HASH
#define PF_HASH 8
#endif
#ifndef PF_SLOT
#define PF_SLOT 4
#endif
#ifndef PF_SLOT_MIN_ORDERS   /* resting orders from which cancel/amend slots are prefetched */
#define PF_SLOT_MIN_ORDERS 32768
#endif
#ifndef PF_CMD
#define PF_CMD 32
#endif

/* Both read only the fields they need from the raw record `rec` (a Cmd). */
static inline void prefetch_hash(const Core *b, const char *rec)
{
#ifndef MATCHING_NO_PREFETCH
    int64_t oid;
    memcpy(&oid, rec + offsetof(Cmd, oid), sizeof(oid));
    __builtin_prefetch(&b->ht[hslot(oid, b->ht_shift)]);
#else
    (void)b;
    (void)rec;
#endif
}

/* For a cancel or amend, the order slot (found through the hash line that was
   prefetched PF_HASH - PF_SLOT commands ago). Only worth it when the live
   orders do not fit in the caches: the branch on the op is unpredictable in a
   mixed stream and costs more than the hint saves on a small book (see
   Book_execute). */
static inline void prefetch_slot(const Core *b, const char *rec)
{
#ifdef MATCHING_NO_PREFETCH
    (void)b;
    (void)rec;
    return;
#else
    uint8_t op = (uint8_t)rec[offsetof(Cmd, op)];
    if (op == OP_CANCEL || op == OP_AMEND) {
        int64_t oid;
        memcpy(&oid, rec + offsetof(Cmd, oid), sizeof(oid));
        uint32_t s = ht_find(b, oid);
        if (s != NIL) {
            const Order *o = &b->orders[s];
            __builtin_prefetch(o);
            __builtin_prefetch((const char *)o + sizeof(Order) - 1);
        }
    }
#endif
}

static inline void core_process(Core *b, const Cmd *c)
{
    switch (c->op) {
    case OP_LIMIT: case OP_IOC: case OP_FOK: case OP_POST_ONLY: case OP_MARKET:
        cmd_new(b, c);
        break;
    case OP_CANCEL:
        cmd_cancel(b, c);
        break;
    case OP_AMEND:
        cmd_amend(b, c);
        break;
    default:
        ev_reject(b, c, R_BAD_OP);
    }
}

/* Iterate resting orders in priority order: bids best->worst, then asks best->worst.
   fn returns nonzero to stop. */
typedef int (*order_visitor)(const Core *b, const Order *o, void *arg);

static int core_visit(const Core *b, order_visitor fn, void *arg)
{
    for (int64_t i = b->best_bid; i >= 0; i = bm_prev(b, i - 1))
        for (uint32_t s = lv(b, (uint32_t)i)->head; s != NIL; s = b->orders[s].next)
            if (fn(b, &b->orders[s], arg)) return 1;
    for (int64_t i = b->best_ask; i >= 0; i = bm_next(b, i + 1))
        for (uint32_t s = lv(b, (uint32_t)i)->head; s != NIL; s = b->orders[s].next)
            if (fn(b, &b->orders[s], arg)) return 1;
    return 0;
}

#define HASH_SEED 0xcbf29ce484222325ULL
#define HASH_PRIME 0x100000001b3ULL

static inline uint64_t hmixin(uint64_t h, uint64_t v)
{
    h = (h ^ v) * HASH_PRIME;
    return h ^ (h >> 32);
}

static int visit_hash(const Core *b, const Order *o, void *arg)
{
    uint64_t *h = (uint64_t *)arg;
    *h = hmixin(*h, (uint64_t)o->side | ((uint64_t)o->flags << 8));
    *h = hmixin(*h, (uint64_t)(b->min_tick + (int64_t)o->lvl));
    *h = hmixin(*h, (uint64_t)o->oid);
    *h = hmixin(*h, (uint64_t)o->owner);
    *h = hmixin(*h, (uint64_t)o->qty);
    return 0;
}

static int visit_snap(const Core *b, const Order *o, void *arg)
{
    SnapOrder **p = (SnapOrder **)arg;
    SnapOrder *r = (*p)++;
    memset(r, 0, sizeof(*r));
    r->oid = o->oid;
    r->owner = o->owner;
    r->price = b->min_tick + (int64_t)o->lvl;
    r->qty = o->qty;
    r->side = o->side;
    r->flags = o->flags;
    return 0;
}

static int cmp_pos(const void *a, const void *b)
{
    int64_t x = ((const PosRec *)a)->owner, y = ((const PosRec *)b)->owner;
    return (x > y) - (x < y);
}

/* The non-zero positions sorted by owner into a new malloc'ed array (*n entries);
   NULL on allocation failure. */
static PosRec *positions_sorted(const Core *b, size_t *n)
{
    PosRec *out = (PosRec *)malloc((b->pos_count ? b->pos_count : 1) * sizeof(PosRec));
    if (!out) return NULL;
    size_t k = 0;
    for (uint64_t i = 0; i <= b->pos_mask; i++)
        if (b->pos[i].lots != 0) out[k++] = b->pos[i];
    qsort(out, k, sizeof(PosRec), cmp_pos);
    *n = k;
    return out;
}

/* Returns NULL if consistent, else a static description of the first failure. */
static const char *core_check(const Core *b)
{
    uint64_t seen = 0;
    int64_t hi_bid = -1, lo_ask = -1;
    for (uint32_t c = 0; c < b->nchunks; c++) {
        if (!b->chunks[c]) {
            for (uint64_t w = (uint64_t)c * (CHUNK_LEVELS / 64);
                 w < b->bmw[0] && w < (uint64_t)(c + 1) * (CHUNK_LEVELS / 64); w++)
                if (b->bm[0][w]) return "bitmap bit set for a level in an unallocated chunk";
            continue;
        }
        for (uint32_t j = 0; j < CHUNK_LEVELS; j++) {
            uint32_t i = (c << CHUNK_BITS) | j;
            if (i >= b->nlevels) break;
            const Level *L = lv(b, i);
            if (L->count == 0) {
                if (L->total != 0) return "empty level with non-zero total";
                if (bm_test(b, i)) return "bitmap bit set for an empty level";
                continue;
            }
            if (!bm_test(b, i)) return "bitmap bit clear for a non-empty level";
            uint32_t n = 0, prev = NIL;
            int64_t total = 0;
            uint32_t ro = 0;
            uint8_t side = 0;
            for (uint32_t s = L->head; s != NIL; s = b->orders[s].next) {
                if (s >= b->cap) return "order link out of range";
                const Order *o = &b->orders[s];
                if (o->prev != prev) return "broken prev link";
                if (o->lvl != i) return "order level mismatch";
                if (o->qty <= 0) return "resting order with qty <= 0";
                if (o->flags & ~CF_REDUCE_ONLY) return "unknown order flag bits";
                ro += o->flags & CF_REDUCE_ONLY;
                if (side == 0) side = o->side;
                if (o->side != side || (side != SIDE_BUY && side != SIDE_SELL)) return "mixed sides in a level";
                if (ht_find(b, o->oid) != s) return "hash map does not point at the resting order";
                total += o->qty;
                prev = s;
                if (++n > b->count) return "cycle in level list";
            }
            if (L->tail != prev) return "level tail mismatch";
            if (n != L->count) return "level count mismatch";
            if (total != L->total) return "level total mismatch";
            if (ro != L->ro) return "level reduce-only count mismatch";
            seen += n;
            if (side == SIDE_BUY) {
                if ((int64_t)i > hi_bid) hi_bid = i;
            } else if (lo_ask < 0) {
                lo_ask = i;
            }
            if (side == SIDE_BUY && lo_ask >= 0) return "bid level above an ask level";
        }
    }
    if (seen != b->count) return "order_count does not match the orders in the levels";
    if (hi_bid != b->best_bid) return "best bid pointer wrong";
    if (lo_ask != b->best_ask) return "best ask pointer wrong";
    if (b->best_bid >= 0 && b->best_ask >= 0 && b->best_bid >= b->best_ask) return "book crossed";
    for (int k = 0; k < 2; k++)
        for (uint64_t w = 0; w < b->bmw[k + 1] * 64; w++) {
            int nz = w < b->bmw[k] && b->bm[k][w] != 0;
            int bit = (int)((b->bm[k + 1][w >> 6] >> (w & 63)) & 1);
            if (nz != bit) return "bitmap summary inconsistent";
        }
    uint64_t used = 0;
    for (uint64_t i = 0; i <= b->ht_mask; i++) {
        if (!b->ht[i].val) continue;
        used++;
        uint32_t s = b->ht[i].val - 1;
        if (s >= b->cap || b->orders[s].oid != b->ht[i].key) return "hash entry points at a wrong slot";
        if (ht_find(b, b->ht[i].key) != s) return "hash entry not reachable by probing";
    }
    if (used != b->count) return "hash size does not match order_count";
    uint64_t nfree = 0;
    for (uint32_t s = b->free_head; s != NIL; s = b->orders[s].next) {
        if (s >= b->cap) return "free list link out of range";
        if (++nfree > b->cap) return "cycle in free list";
    }
    if (nfree + b->count != b->cap) return "free list + resting != capacity";
    uint64_t npos = 0;
    for (uint64_t i = 0; i <= b->pos_mask; i++) {
        const PosRec *e = &b->pos[i];
        if (e->lots == 0) {
            if (e->owner != 0) return "empty position entry not cleared";
            continue;
        }
        npos++;
        if (pos_slot(b, e->owner) != e) return "position entry not reachable by probing";
    }
    if (npos != b->pos_count) return "position count mismatch";
    if (b->pos_count * 2 > b->pos_mask + 1) return "position map over half full";
    return NULL;
}

/* ============================================================ Python glue */

typedef struct {
    PyObject *book_type;
    PyObject *invariant_error;
} module_state;

#define SMALL_RESULTS 32   /* cached int objects for the event counts 0..31 of one call */

typedef struct {
    PyObject_HEAD
    PyObject *small[SMALL_RESULTS];  /* owned references: ints 0..SMALL_RESULTS-1 */
    Core core;
} BookObject;

static inline module_state *state_of(PyObject *self)
{
    return (module_state *)PyType_GetModuleState(Py_TYPE(self));
}

/* Fast path for exact ints that fit one internal digit (|v| < 2**30): no call. */
static inline int small_int(PyObject *o, int64_t *out)
{
#if PY_VERSION_HEX >= 0x030C0000
    if (PyLong_CheckExact(o) && PyUnstable_Long_IsCompact((PyLongObject *)o)) {
        *out = (int64_t)PyUnstable_Long_CompactValue((PyLongObject *)o);
        return 1;
    }
#else
    if (PyLong_CheckExact(o)) {
        Py_ssize_t size = Py_SIZE(o);
        if ((size_t)(size + 1) <= 2) {   /* size -1, 0 or 1: one digit (or none) */
            /* size * digit: the sign, and 0 for size 0 whatever the digit holds */
            *out = (int64_t)size * (int64_t)((PyLongObject *)o)->ob_digit[0];
            return 1;
        }
    }
#endif
    return 0;
}

static int as_i64(PyObject *o, int64_t *out, const char *name)
{
    if (small_int(o, out)) return 0;
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_TypeError) || PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyLong_Check(o) ? PyExc_OverflowError : PyExc_TypeError,
                         "%s must be an int in the int64 range, got %.100R", name, o);
        }
        return -1;
    }
    *out = (int64_t)v;
    return 0;
}

static int as_u8(PyObject *o, uint8_t *out, const char *name)
{
    int64_t fast;
    if (small_int(o, &fast) && fast >= 0 && fast <= 255) {
        *out = (uint8_t)fast;
        return 0;
    }
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_TypeError) || PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%s must be an int in 0..255, got %.100R", name, o);
        }
        return -1;
    }
    if (v < 0 || v > 255) {
        PyErr_Format(PyExc_ValueError, "%s must be an int in 0..255, got %ld", name, v);
        return -1;
    }
    *out = (uint8_t)v;
    return 0;
}

static PyObject *finish_events(BookObject *self, size_t before)
{
    if (__builtin_expect(self->core.ev_oom, 0)) {
        self->core.ev_oom = 0;
        return PyErr_NoMemory();
    }
    size_t n = self->core.ev_n - before;
    if (__builtin_expect(n < SMALL_RESULTS, 1)) return Py_NewRef(self->small[n]);
    return PyLong_FromSize_t(n);
}

static PyObject *run_one(BookObject *self, const Cmd *c)
{
    size_t before = self->core.ev_n;
    core_process(&self->core, c);
    return finish_events(self, before);
}

/* ---- constructor / destructor */

static PyObject *Book_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"min_tick", "max_tick", "capacity", NULL};
    long long min_tick, max_tick;
    Py_ssize_t capacity = 1024;
    BookObject *self = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "LL|n:Book", kwlist, &min_tick, &max_tick, &capacity))
        goto error;
    if (min_tick < 1 || max_tick < min_tick) {
        PyErr_SetString(PyExc_ValueError, "need 1 <= min_tick <= max_tick");
        goto error;
    }
    if ((unsigned long long)(max_tick - min_tick) >= MAX_LEVELS) {
        PyErr_Format(PyExc_ValueError, "price band too wide: at most %u ticks", MAX_LEVELS);
        goto error;
    }
    if (capacity < 1 || capacity > (Py_ssize_t)MAX_ORDERS) {
        PyErr_Format(PyExc_ValueError, "capacity must be in 1..%u", MAX_ORDERS);
        goto error;
    }
    self = (BookObject *)type->tp_alloc(type, 0);
    if (!self) goto error;
    for (int k = 0; k < SMALL_RESULTS; k++)
        if (!(self->small[k] = PyLong_FromLong(k))) goto error;
    if (core_init(&self->core, min_tick, max_tick, (uint32_t)capacity) < 0) {
        PyErr_NoMemory();
        goto error;
    }
    return (PyObject *)self;
error:
    Py_XDECREF(self);
    return NULL;
}

static void Book_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    core_free(&((BookObject *)self)->core);
    for (int k = 0; k < SMALL_RESULTS; k++) Py_CLEAR(((BookObject *)self)->small[k]);
    tp->tp_free(self);
    Py_DECREF(tp);
}

/* ---- single commands */

/* The keyword-only `reduce_only` of submit() and the shorthands (METH_FASTCALL |
   METH_KEYWORDS: the keyword values follow the positional ones in args). A call
   without keywords never gets here. */
static int parse_reduce_only(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                             const char *name, uint8_t *flags)
{
    Py_ssize_t nk = PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < nk; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(k, "reduce_only") != 0) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", name, k);
            return -1;
        }
        PyObject *v = args[nargs + i];
        int t = v == Py_True ? 1 : v == Py_False ? 0 : PyObject_IsTrue(v);
        if (t < 0) return -1;
        *flags = t ? CF_REDUCE_ONLY : 0;
    }
    return 0;
}

PyDoc_STRVAR(Book_submit_doc,
"submit($self, op, side, oid, owner, price, qty, stp=0, /, *, reduce_only=False)\n--\n\n"
"Returns int. "
"Process one command (fields as in COMMAND_DTYPE; reduce_only sets the\n"
"REDUCE_ONLY bit of `flags`). The events it produces are appended to the pending\n"
"event buffer (read them with events()); returns how many were appended. Invalid\n"
"commands produce a REJECTED event, never an exception; only values that do not\n"
"fit the record (op/side/stp outside 0..255, ints outside int64) raise.");

static PyObject *submit_slow(PyObject *self, PyObject *const *args, Py_ssize_t nargsf,
                             PyObject *kwnames);

/* The common call (6 or 7 positional small ints, no keyword) is decoded inline;
   anything else (keywords, big or non-int values, errors) takes submit_slow. */
static PyObject *Book_submit(PyObject *self, PyObject *const *args, Py_ssize_t nargsf,
                             PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (__builtin_expect(kwnames == NULL && (nargs == 7 || nargs == 6), 1)) {
        int64_t op = 0, side = 0, oid = 0, owner = 0, price = 0, qty = 0, stp = 0;
        int ok = small_int(args[0], &op) & small_int(args[1], &side) & small_int(args[2], &oid) &
                 small_int(args[3], &owner) & small_int(args[4], &price) & small_int(args[5], &qty);
        if (nargs == 7) ok &= small_int(args[6], &stp);
        if (__builtin_expect(ok && ((uint64_t)op | (uint64_t)side | (uint64_t)stp) <= 255, 1)) {
            Cmd c;
            memset(&c, 0, sizeof(c));
            c.op = (uint8_t)op;
            c.side = (uint8_t)side;
            c.stp = (uint8_t)stp;
            c.oid = oid;
            c.owner = owner;
            c.price = price;
            c.qty = qty;
            return run_one((BookObject *)self, &c);
        }
    }
    return submit_slow(self, args, nargsf, kwnames);
}

__attribute__((noinline)) static PyObject *submit_slow(PyObject *self, PyObject *const *args,
                                                       Py_ssize_t nargsf, PyObject *kwnames)
{
    Cmd c;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    memset(&c, 0, sizeof(c));
    if (nargs != 6 && nargs != 7) {
        PyErr_Format(PyExc_TypeError, "submit() takes 6 or 7 positional arguments (%zd given)", nargs);
        return NULL;
    }
    if (as_u8(args[0], &c.op, "op") < 0 || as_u8(args[1], &c.side, "side") < 0 ||
        as_i64(args[2], &c.oid, "oid") < 0 || as_i64(args[3], &c.owner, "owner") < 0 ||
        as_i64(args[4], &c.price, "price") < 0 || as_i64(args[5], &c.qty, "qty") < 0 ||
        (nargs == 7 && as_u8(args[6], &c.stp, "stp") < 0))
        return NULL;
    if (kwnames && parse_reduce_only(args, nargs, kwnames, "submit", &c.flags) < 0) return NULL;
    return run_one((BookObject *)self, &c);
}

/* limit/ioc/fok/post_only/market(side, oid, owner, price, qty, stp=0, *, reduce_only=False) */
static PyObject *new_order_call(PyObject *self, PyObject *const *args, Py_ssize_t nargsf,
                                PyObject *kwnames, uint8_t op, const char *name)
{
    Cmd c;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    memset(&c, 0, sizeof(c));
    c.op = op;
    if (nargs != 5 && nargs != 6) {
        PyErr_Format(PyExc_TypeError, "%s() takes 5 or 6 positional arguments (%zd given)", name, nargs);
        return NULL;
    }
    if (as_u8(args[0], &c.side, "side") < 0 || as_i64(args[1], &c.oid, "oid") < 0 ||
        as_i64(args[2], &c.owner, "owner") < 0 || as_i64(args[3], &c.price, "price") < 0 ||
        as_i64(args[4], &c.qty, "qty") < 0 || (nargs == 6 && as_u8(args[5], &c.stp, "stp") < 0))
        return NULL;
    if (kwnames && parse_reduce_only(args, nargs, kwnames, name, &c.flags) < 0) return NULL;
    return run_one((BookObject *)self, &c);
}

#define NEW_ORDER_METHOD(fname, OPC, pyname, what)                                              \
    PyDoc_STRVAR(fname##_doc, pyname "($self, side, oid, owner, price, qty, stp=0, /, *, "     \
                 "reduce_only=False)\n--\n\n"                                                  \
                 what " Same as submit(op, side, ...). Returns the number of events appended.");   \
    static PyObject *fname(PyObject *self, PyObject *const *args, Py_ssize_t nargsf,          \
                           PyObject *kwnames)                                                  \
    {                                                                                          \
        return new_order_call(self, args, nargsf, kwnames, OPC, pyname);                       \
    }

NEW_ORDER_METHOD(Book_limit, OP_LIMIT, "limit", "GTC limit order: match, rest the remainder.")
NEW_ORDER_METHOD(Book_ioc, OP_IOC, "ioc", "Immediate-or-cancel: match, expire the remainder.")
NEW_ORDER_METHOD(Book_fok, OP_FOK, "fok", "Fill-or-kill: fill completely or cancel untouched.")
NEW_ORDER_METHOD(Book_post_only, OP_POST_ONLY, "post_only", "Post-only: cancelled if it would take.")
NEW_ORDER_METHOD(Book_market, OP_MARKET, "market",
                 "Market order; price is the protection price (buy never above, sell never below).")

PyDoc_STRVAR(Book_cancel_doc,
"cancel($self, oid, /)\n--\n\nReturns int. Cancel a resting order. Returns the number of events.");

static PyObject *Book_cancel(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Cmd c;
    memset(&c, 0, sizeof(c));
    c.op = OP_CANCEL;
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "cancel() takes 1 positional argument (%zd given)", nargs);
        return NULL;
    }
    if (as_i64(args[0], &c.oid, "oid") < 0) return NULL;
    return run_one((BookObject *)self, &c);
}

PyDoc_STRVAR(Book_amend_doc,
"amend($self, oid, qty, price=0, /)\n--\n\n"
"Returns int. "
"Amend a resting order: qty is the new open quantity, price the new price\n"
"(0 keeps the price). Returns the number of events.");

static PyObject *Book_amend(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Cmd c;
    memset(&c, 0, sizeof(c));
    c.op = OP_AMEND;
    if (nargs != 2 && nargs != 3) {
        PyErr_Format(PyExc_TypeError, "amend() takes 2 or 3 positional arguments (%zd given)", nargs);
        return NULL;
    }
    if (as_i64(args[0], &c.oid, "oid") < 0 || as_i64(args[1], &c.qty, "qty") < 0 ||
        (nargs == 3 && as_i64(args[2], &c.price, "price") < 0))
        return NULL;
    return run_one((BookObject *)self, &c);
}

/* ---- batch */

PyDoc_STRVAR(Book_execute_doc,
"execute($self, commands, offsets=None, /)\n--\n\n"
"Returns int. "
"Process a batch of commands: any C-contiguous buffer of COMMAND_DTYPE records\n"
"(item size 40, or raw bytes whose length is a multiple of 40). Events are\n"
"appended to the pending event buffer exactly as one submit() per command would;\n"
"returns the number appended. If `offsets` is given it must be a writable\n"
"C-contiguous int64 buffer of at least len(commands)+1 items: offsets[i] is the\n"
"index (in the pending buffer) of the first event of command i, offsets[n] the end.");

static PyObject *Book_execute(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    BookObject *bo = (BookObject *)self;
    Py_buffer cv, ov;
    int have_c = 0, have_o = 0;
    PyObject *result = NULL;
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "execute() takes 1 or 2 positional arguments (%zd given)", nargs);
        goto error;
    }
    if (PyObject_GetBuffer(args[0], &cv, PyBUF_C_CONTIGUOUS) < 0) goto error;
    have_c = 1;
    if (cv.itemsize != (Py_ssize_t)sizeof(Cmd) && cv.itemsize != 1) {
        PyErr_Format(PyExc_TypeError,
                     "commands must be COMMAND_DTYPE records (item size %zu) or raw bytes; got item size %zd",
                     sizeof(Cmd), cv.itemsize);
        goto error;
    }
    if (cv.len % (Py_ssize_t)sizeof(Cmd) != 0) {
        PyErr_Format(PyExc_ValueError, "commands buffer length %zd is not a multiple of %zu",
                     cv.len, sizeof(Cmd));
        goto error;
    }
    Py_ssize_t n = cv.len / (Py_ssize_t)sizeof(Cmd);
    int64_t *offs = NULL;
    if (nargs == 2 && args[1] != Py_None) {
        if (PyObject_GetBuffer(args[1], &ov, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) goto error;
        have_o = 1;
        if (ov.itemsize != 8 || ov.len < (n + 1) * 8) {
            PyErr_Format(PyExc_ValueError,
                         "offsets must be a writable int64 buffer of at least %zd items", n + 1);
            goto error;
        }
        offs = (int64_t *)ov.buf;
    }
    Core *b = &bo->core;
    size_t before = b->ev_n;
    const char *p = (const char *)cv.buf;
    const Py_ssize_t rec = (Py_ssize_t)sizeof(Cmd);
    /* decided once per batch (a loop-invariant, always predicted branch) */
    const int pf_slots = b->count >= PF_SLOT_MIN_ORDERS;
    for (Py_ssize_t i = 0; i < n; i++) {
        Cmd c;
        if (i + PF_CMD < n) __builtin_prefetch(p + (i + PF_CMD) * rec);
        if (i + PF_HASH < n) prefetch_hash(b, p + (i + PF_HASH) * rec);
        if (pf_slots && i + PF_SLOT < n) prefetch_slot(b, p + (i + PF_SLOT) * rec);
        memcpy(&c, p + i * rec, sizeof(Cmd));
        if (offs) offs[i] = (int64_t)b->ev_n;
        core_process(b, &c);
    }
    if (offs) offs[n] = (int64_t)b->ev_n;
    result = finish_events(bo, before);
error:
    if (have_o) PyBuffer_Release(&ov);
    if (have_c) PyBuffer_Release(&cv);
    return result;
}

/* ---- events */

PyDoc_STRVAR(Book_events_doc,
"events($self, clear=True, /)\n--\n\n"
"Returns bytes. "
"The pending events as EVENT_DTYPE records (np.frombuffer(b, EVENT_DTYPE)).\n"
"With clear=True (default) the pending buffer is emptied.");

static PyObject *Book_events(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Core *b = &((BookObject *)self)->core;
    int clear = 1;
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "events() takes at most 1 argument (%zd given)", nargs);
        return NULL;
    }
    if (nargs == 1 && (clear = PyObject_IsTrue(args[0])) < 0) return NULL;
    PyObject *r = PyBytes_FromStringAndSize((const char *)b->ev, (Py_ssize_t)(b->ev_n * sizeof(Event)));
    if (r && clear) b->ev_n = 0;
    return r;
}

PyDoc_STRVAR(Book_read_events_doc,
"read_events($self, out, /)\n--\n\n"
"Returns int. Move pending events into `out`, a writable C-contiguous buffer of\n"
"EVENT_DTYPE records (e.g. a preallocated np.empty(n, EVENT_DTYPE)) or raw bytes\n"
"(bytearray). Copies as many whole records as fit, oldest first, removes them\n"
"from the pending buffer and returns how many were copied. No allocation.");

static PyObject *Book_read_events(PyObject *self, PyObject *arg)
{
    Core *b = &((BookObject *)self)->core;
    Py_buffer v;
    PyObject *result = NULL;
    if (PyObject_GetBuffer(arg, &v, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) return NULL;
    if (v.itemsize != (Py_ssize_t)sizeof(Event) && v.itemsize != 1) {
        PyErr_Format(PyExc_TypeError,
                     "out must be EVENT_DTYPE records (item size %zu) or raw bytes; got item size %zd",
                     sizeof(Event), v.itemsize);
        goto error;
    }
    size_t k = (size_t)v.len / sizeof(Event);
    if (k > b->ev_n) k = b->ev_n;
    memcpy(v.buf, b->ev, k * sizeof(Event));
    if (k < b->ev_n) memmove(b->ev, b->ev + k, (b->ev_n - k) * sizeof(Event));
    b->ev_n -= k;
    result = PyLong_FromSize_t(k);
error:
    PyBuffer_Release(&v);
    return result;
}

PyDoc_STRVAR(Book_clear_events_doc, "clear_events($self)\n--\n\nReturns None. Drop the pending events.");

static PyObject *Book_clear_events(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    ((BookObject *)self)->core.ev_n = 0;
    Py_RETURN_NONE;
}

/* ---- queries */

static PyObject *level_price_or_none(const Core *b, int64_t i)
{
    if (i < 0) Py_RETURN_NONE;
    return PyLong_FromLongLong(b->min_tick + i);
}

PyDoc_STRVAR(Book_best_bid_doc, "best_bid($self)\n--\n\nReturns int | None. Best bid price in ticks.");
static PyObject *Book_best_bid(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    const Core *b = &((BookObject *)self)->core;
    return level_price_or_none(b, b->best_bid);
}

PyDoc_STRVAR(Book_best_ask_doc, "best_ask($self)\n--\n\nReturns int | None. Best ask price in ticks.");
static PyObject *Book_best_ask(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    const Core *b = &((BookObject *)self)->core;
    return level_price_or_none(b, b->best_ask);
}

static PyObject *depth_side(const Core *b, int buy, Py_ssize_t n)
{
    PyObject *lst = PyList_New(0), *t = NULL;
    if (!lst) goto error;
    int64_t i = buy ? b->best_bid : b->best_ask;
    for (Py_ssize_t k = 0; k < n && i >= 0; k++) {
        const Level *L = lv(b, (uint32_t)i);
        t = Py_BuildValue("(LLI)", (long long)(b->min_tick + i), (long long)L->total, (unsigned)L->count);
        if (!t || PyList_Append(lst, t) < 0) goto error;
        Py_CLEAR(t);
        i = buy ? bm_prev(b, i - 1) : bm_next(b, i + 1);
    }
    return lst;
error:
    Py_XDECREF(t);
    Py_XDECREF(lst);
    return NULL;
}

PyDoc_STRVAR(Book_depth_doc,
"depth($self, n, /)\n--\n\n"
"Returns tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]. "
"Aggregated depth: (bids, asks), each up to n levels best first as\n"
"(price_ticks, total_lots, order_count).");

static PyObject *Book_depth(PyObject *self, PyObject *arg)
{
    const Core *b = &((BookObject *)self)->core;
    PyObject *bids = NULL, *asks = NULL, *r = NULL;
    Py_ssize_t n = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (n == -1 && PyErr_Occurred()) goto error;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "depth(n): n must be >= 0");
        goto error;
    }
    if (!(bids = depth_side(b, 1, n)) || !(asks = depth_side(b, 0, n))) goto error;
    r = PyTuple_Pack(2, bids, asks);
error:
    Py_XDECREF(bids);
    Py_XDECREF(asks);
    return r;
}

static PyObject *pylong_from_u128(unsigned __int128 v)
{
    PyObject *hi = NULL, *lo = NULL, *sh = NULL, *t = NULL, *r = NULL;
    if (v <= (unsigned __int128)UINT64_MAX) return PyLong_FromUnsignedLongLong((unsigned long long)v);
    if (!(hi = PyLong_FromUnsignedLongLong((unsigned long long)(v >> 64)))) goto error;
    if (!(lo = PyLong_FromUnsignedLongLong((unsigned long long)v))) goto error;
    if (!(sh = PyLong_FromLong(64))) goto error;
    if (!(t = PyNumber_Lshift(hi, sh))) goto error;
    r = PyNumber_Or(t, lo);
error:
    Py_XDECREF(hi);
    Py_XDECREF(lo);
    Py_XDECREF(sh);
    Py_XDECREF(t);
    return r;
}

static unsigned __int128 gcd_u128(unsigned __int128 a, unsigned __int128 b)
{
    while (b) {
        unsigned __int128 t = a % b;
        a = b;
        b = t;
    }
    return a;
}

PyDoc_STRVAR(Book_impact_price_doc,
"impact_price($self, side, notional, /)\n--\n\n"
"Returns tuple[int, int] | None. "
"Average execution price of a taker of `side` (BUY walks the asks, SELL the bids)\n"
"spending `notional` (ticks*lots, > 0), with the last level taken fractionally.\n"
"Returns the exact reduced fraction (numerator, denominator) in ticks, or None\n"
"if the side does not hold that much notional. STP is not considered.");

static PyObject *Book_impact_price(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    const Core *b = &((BookObject *)self)->core;
    uint8_t side;
    int64_t notional;
    PyObject *num = NULL, *den = NULL, *r = NULL;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "impact_price() takes 2 positional arguments (%zd given)", nargs);
        return NULL;
    }
    if (as_u8(args[0], &side, "side") < 0 || as_i64(args[1], &notional, "notional") < 0) return NULL;
    if (side != SIDE_BUY && side != SIDE_SELL) {
        PyErr_SetString(PyExc_ValueError, "side must be BUY (1) or SELL (2)");
        return NULL;
    }
    if (notional <= 0) {
        PyErr_SetString(PyExc_ValueError, "notional must be > 0");
        return NULL;
    }
    int buy = side == SIDE_BUY;
    unsigned __int128 rem = (unsigned __int128)notional, q = 0;
    for (int64_t i = buy ? b->best_ask : b->best_bid; i >= 0; i = buy ? bm_next(b, i + 1) : bm_prev(b, i - 1)) {
        const Level *L = lv(b, (uint32_t)i);
        unsigned __int128 p = (unsigned __int128)(b->min_tick + i);
        unsigned __int128 ln = p * (unsigned __int128)L->total;
        if (ln >= rem) {
            unsigned __int128 n = (unsigned __int128)notional * p;
            unsigned __int128 d = q * p + rem;
            unsigned __int128 g = gcd_u128(n, d);
            if (!(num = pylong_from_u128(n / g)) || !(den = pylong_from_u128(d / g))) goto error;
            r = PyTuple_Pack(2, num, den);
            goto error;
        }
        rem -= ln;
        q += (unsigned __int128)L->total;
    }
    Py_RETURN_NONE;
error:
    Py_XDECREF(num);
    Py_XDECREF(den);
    return r;
}

PyDoc_STRVAR(Book_get_doc,
"get($self, oid, /)\n--\n\n"
"Returns tuple[int, int, int, int] | None. "
"A resting order as (side, price_ticks, open_qty, owner), or None.");

static PyObject *Book_get(PyObject *self, PyObject *arg)
{
    const Core *b = &((BookObject *)self)->core;
    int64_t oid;
    if (as_i64(arg, &oid, "oid") < 0) return NULL;
    uint32_t s = ht_find(b, oid);
    if (s == NIL) Py_RETURN_NONE;
    const Order *o = &b->orders[s];
    return Py_BuildValue("(iLLL)", (int)o->side, (long long)(b->min_tick + (int64_t)o->lvl),
                         (long long)o->qty, (long long)o->owner);
}

PyDoc_STRVAR(Book_snapshot_doc,
"snapshot($self)\n--\n\n"
"Returns bytes. "
"All resting orders as ORDER_DTYPE records (with their REDUCE_ONLY flag) in\n"
"priority order: bids best to worst, then asks best to worst, FIFO within a\n"
"level. Positions are not included (positions()).");

static PyObject *Book_snapshot(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    const Core *b = &((BookObject *)self)->core;
    PyObject *r = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)b->count * (Py_ssize_t)sizeof(SnapOrder));
    if (!r) return NULL;
    SnapOrder *p = (SnapOrder *)PyBytes_AS_STRING(r);
    core_visit(b, visit_snap, &p);
    return r;
}

PyDoc_STRVAR(Book_restore_doc,
"restore($self, snapshot, /)\n--\n\n"
"Returns None. "
"Replace the resting orders by those of a snapshot() buffer (ORDER_DTYPE\n"
"records, their REDUCE_ONLY flag included; FIFO order within a level is the\n"
"order of the records). Positions are not touched (set_positions). Raises\n"
"ValueError on an invalid snapshot (bad side, qty, price outside the band,\n"
"duplicate order id, crossed book); the book is then left empty. Pending\n"
"events are kept.");

static PyObject *Book_restore(PyObject *self, PyObject *arg)
{
    Core *b = &((BookObject *)self)->core;
    Py_buffer v;
    PyObject *result = NULL;
    if (PyObject_GetBuffer(arg, &v, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if ((v.itemsize != (Py_ssize_t)sizeof(SnapOrder) && v.itemsize != 1) ||
        v.len % (Py_ssize_t)sizeof(SnapOrder) != 0) {
        PyErr_Format(PyExc_ValueError,
                     "snapshot must be ORDER_DTYPE records (%zu bytes each); got item size %zd, length %zd",
                     sizeof(SnapOrder), v.itemsize, v.len);
        goto error;
    }
    Py_ssize_t n = v.len / (Py_ssize_t)sizeof(SnapOrder);
    const char *p = (const char *)v.buf;
    int64_t max_bid = INT64_MIN, min_ask = INT64_MAX;
    for (Py_ssize_t i = 0; i < n; i++) {
        SnapOrder r;
        memcpy(&r, p + i * (Py_ssize_t)sizeof(SnapOrder), sizeof(r));
        if (r.side != SIDE_BUY && r.side != SIDE_SELL) {
            PyErr_Format(PyExc_ValueError, "snapshot record %zd: bad side %d", i, (int)r.side);
            goto error;
        }
        if (r.qty <= 0 || r.qty > MAX_QTY) {
            PyErr_Format(PyExc_ValueError, "snapshot record %zd: bad qty %lld", i, (long long)r.qty);
            goto error;
        }
        if (r.price < b->min_tick || r.price > b->max_tick) {
            PyErr_Format(PyExc_ValueError, "snapshot record %zd: price %lld outside the band", i,
                         (long long)r.price);
            goto error;
        }
        if (r.side == SIDE_BUY && r.price > max_bid) max_bid = r.price;
        if (r.side == SIDE_SELL && r.price < min_ask) min_ask = r.price;
    }
    if (max_bid >= min_ask) {
        PyErr_SetString(PyExc_ValueError, "snapshot is crossed (a bid at or above an ask)");
        goto error;
    }
    core_clear(b);
    for (Py_ssize_t i = 0; i < n; i++) {
        SnapOrder r;
        memcpy(&r, p + i * (Py_ssize_t)sizeof(SnapOrder), sizeof(r));
        uint32_t lvl = (uint32_t)(r.price - b->min_tick);
        if (ht_find(b, r.oid) != NIL) {
            core_clear(b);
            PyErr_Format(PyExc_ValueError, "snapshot record %zd: duplicate order id %lld", i, (long long)r.oid);
            goto error;
        }
        if (slot_ensure(b) < 0 || ensure_chunk(b, lvl) < 0) {
            core_clear(b);
            PyErr_NoMemory();
            goto error;
        }
        order_rest(b, r.side, r.oid, r.owner, lvl, r.qty, r.flags);
    }
    result = Py_NewRef(Py_None);
error:
    PyBuffer_Release(&v);
    return result;
}

PyDoc_STRVAR(Book_clear_doc,
"clear($self)\n--\n\nReturns None. Remove every resting order and every position (no events).");

static PyObject *Book_clear(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    core_clear(&((BookObject *)self)->core);
    core_clear_positions(&((BookObject *)self)->core);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Book_state_hash_doc,
"state_hash($self)\n--\n\n"
"Returns int. "
"64-bit hash of the resting orders in priority order (side | flags << 8, price,\n"
"oid, owner, qty of each, then their count) and, if any position is non-zero,\n"
"of the non-zero positions by ascending owner (owner, lots of each, then their\n"
"count); equal books have equal hashes.");

static PyObject *Book_state_hash(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    const Core *b = &((BookObject *)self)->core;
    uint64_t h = HASH_SEED;
    core_visit(b, visit_hash, &h);
    h = hmixin(h, b->count);
    if (b->pos_count) {
        size_t n;
        PosRec *ps = positions_sorted(b, &n);
        if (!ps) return PyErr_NoMemory();
        for (size_t i = 0; i < n; i++) {
            h = hmixin(h, (uint64_t)ps[i].owner);
            h = hmixin(h, (uint64_t)ps[i].lots);
        }
        h = hmixin(h, (uint64_t)n);
        free(ps);
    }
    return PyLong_FromUnsignedLongLong(h);
}

PyDoc_STRVAR(Book_set_positions_doc,
"set_positions($self, positions, /)\n--\n\n"
"Returns None. "
"Set the position of each owner of a C-contiguous buffer of POSITION_DTYPE\n"
"records (owner i8, lots i8; item size 16 or raw bytes), replacing its current\n"
"position (lots 0 removes it; a later record for the same owner wins). Other\n"
"owners are untouched. Raises ValueError if a |lots| exceeds 2**62 (nothing is\n"
"changed then).");

static PyObject *Book_set_positions(PyObject *self, PyObject *arg)
{
    Core *b = &((BookObject *)self)->core;
    Py_buffer v;
    PyObject *result = NULL;
    if (PyObject_GetBuffer(arg, &v, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if ((v.itemsize != (Py_ssize_t)sizeof(PosRec) && v.itemsize != 1) ||
        v.len % (Py_ssize_t)sizeof(PosRec) != 0) {
        PyErr_Format(PyExc_ValueError,
                     "positions must be POSITION_DTYPE records (%zu bytes each); got item size %zd, length %zd",
                     sizeof(PosRec), v.itemsize, v.len);
        goto error;
    }
    Py_ssize_t n = v.len / (Py_ssize_t)sizeof(PosRec);
    const char *p = (const char *)v.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        PosRec r;
        memcpy(&r, p + i * (Py_ssize_t)sizeof(PosRec), sizeof(r));
        if (r.lots < -MAX_POSITION || r.lots > MAX_POSITION) {
            PyErr_Format(PyExc_ValueError, "positions record %zd: lots %lld outside -2**62..2**62", i,
                         (long long)r.lots);
            goto error;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PosRec r;
        memcpy(&r, p + i * (Py_ssize_t)sizeof(PosRec), sizeof(r));
        if (pos_set(b, r.owner, r.lots) < 0) {
            PyErr_NoMemory();
            goto error;
        }
    }
    result = Py_NewRef(Py_None);
error:
    PyBuffer_Release(&v);
    return result;
}

PyDoc_STRVAR(Book_position_doc,
"position($self, owner, /)\n--\n\n"
"Returns int. The signed position of `owner` in lots (long > 0, short < 0, 0 if none).");

static PyObject *Book_position(PyObject *self, PyObject *arg)
{
    const Core *b = &((BookObject *)self)->core;
    int64_t owner;
    if (as_i64(arg, &owner, "owner") < 0) return NULL;
    return PyLong_FromLongLong(pos_get(b, owner));
}

PyDoc_STRVAR(Book_positions_doc,
"positions($self)\n--\n\n"
"Returns bytes. Every non-zero position as POSITION_DTYPE records, by ascending owner\n"
"(set_positions() of it on an empty book reproduces them).");

static PyObject *Book_positions(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    const Core *b = &((BookObject *)self)->core;
    size_t n;
    PosRec *ps = positions_sorted(b, &n);
    if (!ps) return PyErr_NoMemory();
    PyObject *r = PyBytes_FromStringAndSize((const char *)ps, (Py_ssize_t)(n * sizeof(PosRec)));
    free(ps);
    return r;
}

PyDoc_STRVAR(Book_validate_doc,
"validate($self)\n--\n\n"
"Returns None. "
"Check the internal invariants (level links, totals and counts, best prices,\n"
"bitmaps, hash map, free list); raises BookInvariantError on the first failure.");

static PyObject *Book_validate(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    const char *msg = core_check(&((BookObject *)self)->core);
    if (msg) {
        PyErr_SetString(state_of(self)->invariant_error, msg);
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Book_memory_doc,
"memory_bytes($self)\n--\n\nReturns int. Bytes allocated by the book (pool, hash, ladder, bitmaps,\n"
"position map, events).");

static PyObject *Book_memory_bytes(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    const Core *b = &((BookObject *)self)->core;
    size_t m = (size_t)b->cap * sizeof(Order) + (b->ht_mask + 1) * sizeof(HEntry) +
               b->nchunks * sizeof(Level *) + b->ev_cap * sizeof(Event) +
               (b->pos_mask + 1) * sizeof(PosRec);
    for (uint32_t c = 0; c < b->nchunks; c++)
        if (b->chunks[c]) m += CHUNK_LEVELS * sizeof(Level);
    for (int k = 0; k < 3; k++) m += b->bmw[k] * sizeof(uint64_t);
    return PyLong_FromSize_t(m);
}

static Py_ssize_t Book_len(PyObject *self)
{
    return (Py_ssize_t)((BookObject *)self)->core.count;
}

static PyObject *get_order_count(PyObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLong(((BookObject *)self)->core.count);
}
static PyObject *get_min_tick(PyObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromLongLong(((BookObject *)self)->core.min_tick);
}
static PyObject *get_max_tick(PyObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromLongLong(((BookObject *)self)->core.max_tick);
}
static PyObject *get_capacity(PyObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLong(((BookObject *)self)->core.cap);
}
static PyObject *get_pending(PyObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromSize_t(((BookObject *)self)->core.ev_n);
}
static PyObject *get_position_count(PyObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(((BookObject *)self)->core.pos_count);
}

static PyGetSetDef Book_getset[] = {
    {"order_count", get_order_count, NULL, "Number of resting orders.", NULL},
    {"min_tick", get_min_tick, NULL, "Lowest accepted price (ticks).", NULL},
    {"max_tick", get_max_tick, NULL, "Highest accepted price (ticks).", NULL},
    {"capacity", get_capacity, NULL, "Current order pool capacity (grows by doubling).", NULL},
    {"pending_events", get_pending, NULL, "Number of events waiting in the buffer.", NULL},
    {"position_count", get_position_count, NULL, "Number of owners with a non-zero position.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Book_methods[] = {
    {"submit", (PyCFunction)(void (*)(void))Book_submit, METH_FASTCALL | METH_KEYWORDS, Book_submit_doc},
    {"limit", (PyCFunction)(void (*)(void))Book_limit, METH_FASTCALL | METH_KEYWORDS, Book_limit_doc},
    {"ioc", (PyCFunction)(void (*)(void))Book_ioc, METH_FASTCALL | METH_KEYWORDS, Book_ioc_doc},
    {"fok", (PyCFunction)(void (*)(void))Book_fok, METH_FASTCALL | METH_KEYWORDS, Book_fok_doc},
    {"post_only", (PyCFunction)(void (*)(void))Book_post_only, METH_FASTCALL | METH_KEYWORDS, Book_post_only_doc},
    {"market", (PyCFunction)(void (*)(void))Book_market, METH_FASTCALL | METH_KEYWORDS, Book_market_doc},
    {"cancel", (PyCFunction)(void (*)(void))Book_cancel, METH_FASTCALL, Book_cancel_doc},
    {"amend", (PyCFunction)(void (*)(void))Book_amend, METH_FASTCALL, Book_amend_doc},
    {"execute", (PyCFunction)(void (*)(void))Book_execute, METH_FASTCALL, Book_execute_doc},
    {"events", (PyCFunction)(void (*)(void))Book_events, METH_FASTCALL, Book_events_doc},
    {"read_events", Book_read_events, METH_O, Book_read_events_doc},
    {"clear_events", Book_clear_events, METH_NOARGS, Book_clear_events_doc},
    {"best_bid", Book_best_bid, METH_NOARGS, Book_best_bid_doc},
    {"best_ask", Book_best_ask, METH_NOARGS, Book_best_ask_doc},
    {"depth", Book_depth, METH_O, Book_depth_doc},
    {"impact_price", (PyCFunction)(void (*)(void))Book_impact_price, METH_FASTCALL, Book_impact_price_doc},
    {"get", Book_get, METH_O, Book_get_doc},
    {"snapshot", Book_snapshot, METH_NOARGS, Book_snapshot_doc},
    {"restore", Book_restore, METH_O, Book_restore_doc},
    {"clear", Book_clear, METH_NOARGS, Book_clear_doc},
    {"set_positions", Book_set_positions, METH_O, Book_set_positions_doc},
    {"position", Book_position, METH_O, Book_position_doc},
    {"positions", Book_positions, METH_NOARGS, Book_positions_doc},
    {"state_hash", Book_state_hash, METH_NOARGS, Book_state_hash_doc},
    {"validate", Book_validate, METH_NOARGS, Book_validate_doc},
    {"memory_bytes", Book_memory_bytes, METH_NOARGS, Book_memory_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(Book_doc,
"Book(min_tick, max_tick, capacity=1024)\n--\n\n"
"Price-time priority order book for one symbol. Prices are integer ticks in\n"
"[min_tick, max_tick] (1 <= min_tick, at most 2**28 ticks wide), quantities\n"
"integer lots in 1..2**36-1. `capacity` presizes the resting-order pool\n"
"(it doubles when full). See the module docstring for commands and events.");

static PyType_Slot Book_slots[] = {
    {Py_tp_new, Book_new},
    {Py_tp_dealloc, Book_dealloc},
    {Py_tp_methods, Book_methods},
    {Py_tp_getset, Book_getset},
    {Py_tp_doc, (void *)Book_doc},
    {Py_mp_length, Book_len},
    {Py_sq_length, Book_len},
    {0, NULL},
};

static PyType_Spec Book_spec = {
    .name = "matching_native._book.Book",
    .basicsize = sizeof(BookObject),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Book_slots,
};

/* ---------------------------------------------------------------- module */

PyDoc_STRVAR(layout_doc,
"_layout($module)\n--\n\n"
"Returns dict. "
"{record: (itemsize, {field: offset})} of the C records, for checking the numpy dtypes.");

static PyObject *mod_layout(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue(
        "{s:(n{s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n}),"
        "s:(n{s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n}),"
        "s:(n{s:n,s:n,s:n,s:n,s:n,s:n}),"
        "s:(n{s:n,s:n})}",
        "command", (Py_ssize_t)sizeof(Cmd),
        "op", OFF(Cmd, op), "side", OFF(Cmd, side), "stp", OFF(Cmd, stp),
        "flags", OFF(Cmd, flags), "oid", OFF(Cmd, oid), "owner", OFF(Cmd, owner), "price", OFF(Cmd, price),
        "qty", OFF(Cmd, qty),
        "event", (Py_ssize_t)sizeof(Event),
        "kind", OFF(Event, kind), "reason", OFF(Event, reason), "side", OFF(Event, side),
        "flags", OFF(Event, flags), "op", OFF(Event, op), "oid", OFF(Event, oid),
        "owner", OFF(Event, owner), "maker_oid", OFF(Event, maker_oid),
        "maker_owner", OFF(Event, maker_owner), "price", OFF(Event, price),
        "qty", OFF(Event, qty), "leaves", OFF(Event, leaves),
        "maker_leaves", OFF(Event, maker_leaves),
        "order", (Py_ssize_t)sizeof(SnapOrder),
        "oid", OFF(SnapOrder, oid), "owner", OFF(SnapOrder, owner),
        "price", OFF(SnapOrder, price), "qty", OFF(SnapOrder, qty),
        "side", OFF(SnapOrder, side), "flags", OFF(SnapOrder, flags),
        "position", (Py_ssize_t)sizeof(PosRec),
        "owner", OFF(PosRec, owner), "lots", OFF(PosRec, lots));
}

static PyMethodDef module_methods[] = {
    {"_layout", mod_layout, METH_NOARGS, layout_doc},
    {NULL, NULL, 0, NULL},
};

static int module_exec(PyObject *m)
{
    module_state *st = (module_state *)PyModule_GetState(m);
    struct { const char *name; long value; } consts[] = {
        {"OP_LIMIT", OP_LIMIT}, {"OP_IOC", OP_IOC}, {"OP_FOK", OP_FOK},
        {"OP_POST_ONLY", OP_POST_ONLY}, {"OP_MARKET", OP_MARKET}, {"OP_CANCEL", OP_CANCEL},
        {"OP_AMEND", OP_AMEND},
        {"SIDE_BUY", SIDE_BUY}, {"SIDE_SELL", SIDE_SELL},
        {"STP_NONE", STP_NONE}, {"STP_EXPIRE_TAKER", STP_EXPIRE_TAKER},
        {"STP_EXPIRE_MAKER", STP_EXPIRE_MAKER}, {"STP_EXPIRE_BOTH", STP_EXPIRE_BOTH},
        {"EV_FILL", EV_FILL}, {"EV_RESTED", EV_RESTED}, {"EV_CANCELLED", EV_CANCELLED},
        {"EV_AMENDED", EV_AMENDED}, {"EV_REJECTED", EV_REJECTED},
        {"R_NONE", R_NONE}, {"R_USER_CANCEL", R_USER_CANCEL},
        {"R_REMAINDER_EXPIRED", R_REMAINDER_EXPIRED}, {"R_FOK_NOT_FILLABLE", R_FOK_NOT_FILLABLE},
        {"R_STP_TAKER", R_STP_TAKER}, {"R_STP_MAKER", R_STP_MAKER},
        {"R_POST_ONLY_WOULD_TAKE", R_POST_ONLY_WOULD_TAKE}, {"R_REDUCE_ONLY", R_REDUCE_ONLY},
        {"R_UNKNOWN_ORDER", R_UNKNOWN_ORDER},
        {"R_DUPLICATE_ORDER_ID", R_DUPLICATE_ORDER_ID}, {"R_BAD_QTY", R_BAD_QTY},
        {"R_PRICE_OUT_OF_BAND", R_PRICE_OUT_OF_BAND}, {"R_AMEND_UNKNOWN_ORDER", R_AMEND_UNKNOWN_ORDER},
        {"R_BAD_OP", R_BAD_OP}, {"R_BAD_SIDE", R_BAD_SIDE}, {"R_BAD_STP", R_BAD_STP},
        {"R_BOOK_FULL", R_BOOK_FULL}, {"R_AMEND_WOULD_CROSS", R_AMEND_WOULD_CROSS},
        {"F_MAKER_DONE", F_MAKER_DONE}, {"F_TAKER_DONE", F_TAKER_DONE},
        {"F_PRIORITY_KEPT", F_PRIORITY_KEPT}, {"CF_REDUCE_ONLY", CF_REDUCE_ONLY},
        {"MAX_LEVELS", (long)MAX_LEVELS}, {"MAX_ORDERS", (long)MAX_ORDERS},
    };
    for (size_t i = 0; i < sizeof(consts) / sizeof(consts[0]); i++)
        if (PyModule_AddIntConstant(m, consts[i].name, consts[i].value) < 0) return -1;
    PyObject *mq = PyLong_FromLongLong(MAX_QTY);
    if (!mq) return -1;
    int rc = PyModule_AddObjectRef(m, "MAX_QTY", mq);
    Py_DECREF(mq);
    if (rc < 0) return -1;
    PyObject *mp = PyLong_FromLongLong(MAX_POSITION);
    if (!mp) return -1;
    rc = PyModule_AddObjectRef(m, "MAX_POSITION", mp);
    Py_DECREF(mp);
    if (rc < 0) return -1;
    st->invariant_error = PyErr_NewExceptionWithDoc(
        "matching_native._book.BookInvariantError",
        "Raised by Book.validate() when an internal invariant does not hold.",
        PyExc_AssertionError, NULL);
    if (!st->invariant_error) return -1;
    if (PyModule_AddObjectRef(m, "BookInvariantError", st->invariant_error) < 0) return -1;
    st->book_type = PyType_FromModuleAndSpec(m, &Book_spec, NULL);
    if (!st->book_type) return -1;
    if (PyModule_AddObjectRef(m, "Book", st->book_type) < 0) return -1;
    return 0;
}

static int module_traverse(PyObject *m, visitproc visit, void *arg)
{
    module_state *st = (module_state *)PyModule_GetState(m);
    if (st) {
        Py_VISIT(st->book_type);
        Py_VISIT(st->invariant_error);
    }
    return 0;
}

static int module_clear(PyObject *m)
{
    module_state *st = (module_state *)PyModule_GetState(m);
    if (st) {
        Py_CLEAR(st->book_type);
        Py_CLEAR(st->invariant_error);
    }
    return 0;
}

static void module_free(void *m)
{
    module_clear((PyObject *)m);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

PyDoc_STRVAR(module_doc,
"C price-time priority order book (see matching_native/README.md).\n"
"\n"
"Integer ticks and lots only. One Book per symbol. Commands are COMMAND_DTYPE\n"
"records (40 bytes: op u1, side u1, stp u1, flags u1, 4 pad, oid i8, owner i8,\n"
"price i8, qty i8); events are EVENT_DTYPE records (72 bytes: kind u1, reason u1,\n"
"side u1, flags u1, op u1, 3 pad, oid, owner, maker_oid, maker_owner, price, qty,\n"
"leaves, maker_leaves, all i8); snapshots are ORDER_DTYPE records (40 bytes: oid,\n"
"owner, price, qty i8, side u1, flags u1, 6 pad); positions are POSITION_DTYPE\n"
"records (16 bytes: owner i8, lots i8). The codes are the module constants OP_*,\n"
"SIDE_*, STP_*, EV_*, R_*, F_*, CF_*; matching_native documents each of them.");

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "matching_native._book",
    .m_doc = module_doc,
    .m_size = sizeof(module_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__book(void)
{
    return PyModuleDef_Init(&module_def);
}

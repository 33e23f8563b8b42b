package chunkstore

import "container/list"

// lru is a size-bounded least-recently-used map. It is not safe for
// concurrent use: owners guard it with their own mutex (which they also use
// for in-flight bookkeeping, so get-or-compute is one critical section).
type lru[K comparable, V any] struct {
	max, size int64
	ll        *list.List
	m         map[K]*list.Element
	onEvict   func(K, V)
}

type lruItem[K comparable, V any] struct {
	k    K
	v    V
	cost int64
}

func newLRU[K comparable, V any](max int64) *lru[K, V] {
	return &lru[K, V]{max: max, ll: list.New(), m: make(map[K]*list.Element)}
}

func (c *lru[K, V]) get(k K) (V, bool) {
	if e, ok := c.m[k]; ok {
		c.ll.MoveToFront(e)
		return e.Value.(*lruItem[K, V]).v, true
	}
	var zero V
	return zero, false
}

// add inserts or replaces k; an item costlier than the whole budget is not
// kept.
func (c *lru[K, V]) add(k K, v V, cost int64) {
	if cost > c.max {
		c.remove(k)
		return
	}
	if e, ok := c.m[k]; ok {
		it := e.Value.(*lruItem[K, V])
		c.size += cost - it.cost
		it.v, it.cost = v, cost
		c.ll.MoveToFront(e)
	} else {
		c.m[k] = c.ll.PushFront(&lruItem[K, V]{k: k, v: v, cost: cost})
		c.size += cost
	}
	for c.size > c.max {
		c.removeElement(c.ll.Back())
	}
}

func (c *lru[K, V]) remove(k K) {
	if e, ok := c.m[k]; ok {
		c.removeElement(e)
	}
}

func (c *lru[K, V]) removeElement(e *list.Element) {
	it := e.Value.(*lruItem[K, V])
	c.ll.Remove(e)
	delete(c.m, it.k)
	c.size -= it.cost
	if c.onEvict != nil {
		c.onEvict(it.k, it.v)
	}
}

func (c *lru[K, V]) len() int { return c.ll.Len() }

package tokensource

import (
	"sync"
	"time"
)

// recentSet remembers values by key for a while and never holds more than max
// entries: a full set first drops its expired entries, then arbitrary ones. It
// is what the engine keeps of input it does not control (codes that failed,
// pushes already handled), so what that input can make it hold is bounded.
type recentSet[V any] struct {
	mu  sync.Mutex
	max int
	m   map[string]recentItem[V]
}

type recentItem[V any] struct {
	v     V
	until time.Time
}

func newRecentSet[V any](max int) *recentSet[V] {
	return &recentSet[V]{max: max, m: make(map[string]recentItem[V])}
}

// get returns the value of key while it is remembered.
func (s *recentSet[V]) get(key string, now time.Time) (V, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	it, ok := s.m[key]
	if !ok || !now.Before(it.until) {
		var zero V
		return zero, false
	}
	return it.v, true
}

// put remembers v under key until the given time.
func (s *recentSet[V]) put(key string, v V, until, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[key]; !ok && len(s.m) >= s.max {
		for k, it := range s.m {
			if !now.Before(it.until) {
				delete(s.m, k)
			}
		}
		for k := range s.m { // map order is random: no entry is favoured
			if len(s.m) < s.max {
				break
			}
			delete(s.m, k)
		}
	}
	s.m[key] = recentItem[V]{v: v, until: until}
}

package tokensource_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/tptoken/caddy-tptoken/tokensource"
)

// BenchmarkTokenHit is the request path when the token is cached and fresh.
func BenchmarkTokenHit(b *testing.B) {
	h := newHarness(b, tokensource.V1)
	e := h.engine()
	h.authorize(e, "tt01bench")
	ctx := context.Background()
	if _, err := e.Token(ctx, "tt01bench"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := e.Token(ctx, "tt01bench"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTokenHitParallel: many goroutines, many authorizers.
func BenchmarkTokenHitParallel(b *testing.B) {
	h := newHarness(b, tokensource.V1)
	e := h.engine()
	ids := make([]string, 64)
	for i := range ids {
		ids[i] = fmt.Sprintf("tt%02dbench", i)
		h.authorize(e, ids[i])
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := e.Token(ctx, ids[i%len(ids)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

// BenchmarkComponentTokenHit is the request path of a cached, fresh
// component token (a single token, as an app's).
func BenchmarkComponentTokenHit(b *testing.B) {
	h := newHarness(b, tokensource.V2)
	e := h.engine()
	ctx := context.Background()
	if _, err := e.ComponentToken(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := e.ComponentToken(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppTokenHit is the request path of a cached, fresh app token.
func BenchmarkAppTokenHit(b *testing.B) {
	h := newHarness(b, tokensource.V2)
	a := h.appSource(tokensource.ClientToken)
	ctx := context.Background()
	if _, err := a.Token(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := a.Token(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

package probe

import (
	"fmt"
	"testing"
	"time"

	"github.com/libhaext/libhaext/internal/fakep11"
	"github.com/libhaext/libhaext/pkg/conf"
)

// benchCheck measures one status call on a group of n members over a
// zero-latency fake module: the engine's own cost per call.
func benchCheck(b *testing.B, n int) {
	f := fakep11.New(n)
	e := newEngine(b, []conf.Group{f.Group("bench", 1, n)}, Options{Timeout: 3 * time.Second, Sockets: allHealthy})
	e.Start()
	defer e.Close()
	out := make([]Verdict, 0, n)
	if v := e.Check(0, time.Now().Add(e.Timeout()), out); v[n-1].Status != StatusOK {
		b.Fatalf("warm-up: %v", v)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out = e.Check(0, time.Now().Add(e.Timeout()), out[:0])
	}
	b.StopTimer()
	for _, v := range out {
		if v.Status != StatusOK {
			b.Fatalf("member %x: %s", v.Serial, v.Status)
		}
	}
}

func BenchmarkCheck(b *testing.B) {
	for _, n := range []int{1, 32} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) { benchCheck(b, n) })
	}
}

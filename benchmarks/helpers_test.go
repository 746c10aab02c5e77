package benchmarks_test

import (
	"testing"

	"github.com/pullthrough/pullthrough/benchmarks"
	"github.com/pullthrough/pullthrough/fixtures"
)

func hangUpstreams(tb testing.TB, env *benchmarks.Env) {
	tb.Helper()
	if err := env.Upstreams.SetFault(fixtures.Fault{Kind: fixtures.FaultHang}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { env.Upstreams.SetFault(fixtures.Fault{}) })
}

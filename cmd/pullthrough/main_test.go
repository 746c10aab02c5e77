package main

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pullthrough/pullthrough/fixtures"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func TestServePrintsMirrorFlagsAndStats(t *testing.T) {
	ups := fixtures.NewTalosUpstreams(t, "v1.13.0", fixtures.WithScale(0.001), fixtures.Unthrottled())
	args := []string{"-os-ports", "-bridge", "127.0.0.1", "-storage", t.TempDir()}
	for _, u := range ups.All() {
		args = append(args, "-upstream", u.Host()+"="+u.URL())
	}
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, &out, &errOut) }()
	deadline := time.After(time.Minute)
	for !strings.Contains(out.String(), "--registry-mirror ghcr.io=http://127.0.0.1:") {
		select {
		case err := <-done:
			t.Fatalf("run ended early: %v\n%s%s", err, out.String(), errOut.String())
		case <-deadline:
			t.Fatalf("no mirror flags printed:\n%s", out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	assert.Contains(t, out.String(), "--registry-mirror registry.k8s.io=http://127.0.0.1:")
	cancel()
	require.NoError(t, <-done)
	assert.Contains(t, out.String(), "# ghcr.io: 0 requests")
}

func TestBadFlagsAreNamed(t *testing.T) {
	var out, errOut syncBuffer
	err := run(context.Background(), []string{"-upstream", "nohost"}, &out, &errOut)
	assert.ErrorContains(t, err, `upstream "nohost": want host=URL`)
	err = run(context.Background(), []string{"-mode", "sometimes", "-bridge", "127.0.0.1"}, &out, &errOut)
	assert.ErrorContains(t, err, `mode "sometimes"`)
}

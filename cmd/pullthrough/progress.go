package main

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// progress shows one status line on a terminal (images done, bytes so far,
// the images in flight), redrawn a few times a second, and a line per
// finished image anywhere else. Its own few lines instead of a progress-bar
// library: the command's dependency count is a promise.
type progress struct {
	w     io.Writer
	tty   bool
	total int

	mu       sync.Mutex
	finished int
	flight   map[string]*atomic.Int64
	sizes    map[string]int64
	stop     chan struct{}
	stopped  chan struct{}
	stopOnce sync.Once
	lastLine int
}

func newProgress(w io.Writer, images int) *progress {
	p := &progress{w: w, total: images, flight: map[string]*atomic.Int64{}, sizes: map[string]int64{}}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
			p.stop, p.stopped = make(chan struct{}), make(chan struct{})
			go p.draw()
		}
	}
	return p
}

func (p *progress) draw() {
	defer close(p.stopped)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			p.render(true)
			return
		case <-t.C:
			p.render(false)
		}
	}
}

func (p *progress) render(final bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	refs := make([]string, 0, len(p.flight))
	var got, want int64
	for ref, n := range p.flight {
		refs = append(refs, ref)
		got += n.Load()
		want += p.sizes[ref]
	}
	sort.Strings(refs)
	line := fmt.Sprintf("%d / %d images", p.finished, p.total)
	if len(refs) > 0 {
		line += fmt.Sprintf(", %s of %s: %s", mb(got), mb(want), strings.Join(refs, ", "))
	}
	if len(line) > 120 {
		line = line[:119] + "…"
	}
	pad := max(0, p.lastLine-len(line))
	p.lastLine = len(line)
	fmt.Fprintf(p.w, "\r%s%s", line, strings.Repeat(" ", pad))
	if final {
		fmt.Fprintln(p.w)
	}
}

func (p *progress) start(ref string, bytes int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.flight[ref] = &atomic.Int64{}
	p.sizes[ref] = bytes
}

type countWriter struct{ n *atomic.Int64 }

func (c countWriter) Write(q []byte) (int, error) {
	if c.n != nil {
		c.n.Add(int64(len(q)))
	}
	return len(q), nil
}

func (p *progress) writer(ref string) io.Writer {
	p.mu.Lock()
	defer p.mu.Unlock()
	return countWriter{p.flight[ref]}
}

func (p *progress) done(ref string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.flight, ref)
	delete(p.sizes, ref)
	p.finished++
	if p.tty && err == nil {
		return
	}
	if p.tty {
		fmt.Fprintf(p.w, "\r%s\r", strings.Repeat(" ", p.lastLine))
		p.lastLine = 0
	}
	if err != nil {
		fmt.Fprintf(p.w, "failed  %s\n", ref) // the reason is in the command's one error message
	} else {
		fmt.Fprintf(p.w, "done    %s\n", ref)
	}
}

// wait ends the status line; pullAll calls it, and a second call is a no-op.
func (p *progress) wait() {
	if p.tty {
		p.stopOnce.Do(func() { close(p.stop) })
		<-p.stopped
	}
}

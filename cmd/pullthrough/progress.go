package main

import (
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
)

// progress shows a bar per image and one overall on a terminal, and a line
// per finished image anywhere else.
type progress struct {
	w     io.Writer
	p     *mpb.Progress // nil: not a terminal
	total *mpb.Bar

	mu   sync.Mutex
	bars map[string]*mpb.Bar
}

func newProgress(w io.Writer, images int) *progress {
	pr := &progress{w: w, bars: map[string]*mpb.Bar{}}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			pr.p = mpb.New(mpb.WithOutput(w), mpb.WithWidth(32))
			pr.total = pr.p.AddBar(int64(images),
				mpb.PrependDecorators(decor.Name("all images ", decor.WCSyncSpaceR), decor.CountersNoUnit("%d / %d")),
				mpb.AppendDecorators(decor.Percentage()))
		}
	}
	return pr
}

func (p *progress) start(ref string, bytes int64) {
	if p.p == nil {
		return
	}
	bar := p.p.AddBar(bytes,
		mpb.PrependDecorators(decor.Name(ref+" ", decor.WCSyncSpaceR), decor.Counters(decor.SizeB1000(0), "% .1f / % .1f")),
		mpb.AppendDecorators(decor.Percentage()), mpb.BarRemoveOnComplete())
	p.mu.Lock()
	p.bars[ref] = bar
	p.mu.Unlock()
}

type barWriter struct{ bar *mpb.Bar }

func (b barWriter) Write(q []byte) (int, error) {
	if b.bar != nil {
		b.bar.IncrBy(len(q))
	}
	return len(q), nil
}

func (p *progress) writer(ref string) io.Writer {
	p.mu.Lock()
	defer p.mu.Unlock()
	return barWriter{p.bars[ref]}
}

func (p *progress) done(ref string, err error) {
	if p.p == nil {
		p.mu.Lock()
		defer p.mu.Unlock()
		if err != nil {
			fmt.Fprintf(p.w, "failed  %s: %v\n", ref, err)
		} else {
			fmt.Fprintf(p.w, "done    %s\n", ref)
		}
		return
	}
	p.mu.Lock()
	bar := p.bars[ref]
	p.mu.Unlock()
	if bar != nil && !bar.Completed() {
		bar.Abort(true)
	}
	p.total.Increment()
}

func (p *progress) wait() {
	if p.p != nil {
		p.p.Wait()
	}
}

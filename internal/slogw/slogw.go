// Package slogw turns a *slog.Logger into the io.Writer that code written
// for writers (Talos's provisioners, build tools) wants, one record a line.
package slogw

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
)

// Writer logs each complete line written to it as one record at Level,
// with Attrs. A line still open is logged by Flush. Safe for concurrent use.
type Writer struct {
	logger *slog.Logger
	level  slog.Level
	attrs  []slog.Attr

	mu  sync.Mutex
	buf []byte
}

// New returns a Writer logging to l at level, or io.Discard when l is nil.
func New(l *slog.Logger, level slog.Level, attrs ...slog.Attr) io.Writer {
	if l == nil {
		return io.Discard
	}
	return &Writer{logger: l, level: level, attrs: attrs}
}

func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.emit(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

// Flush logs a pending partial line.
func (w *Writer) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.emit(string(w.buf))
		w.buf = nil
	}
}

// Flush logs what w holds of a line not yet ended, when w is a *Writer;
// other writers are left alone.
func Flush(w io.Writer) {
	if sw, ok := w.(*Writer); ok {
		sw.Flush()
	}
}

func (w *Writer) emit(line string) {
	line = strings.TrimRight(line, "\r ")
	if line == "" {
		return
	}
	w.logger.LogAttrs(context.Background(), w.level, line, w.attrs...)
}

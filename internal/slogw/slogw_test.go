package slogw_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/pullthrough/pullthrough/internal/slogw"
)

func TestWriterLogsLines(t *testing.T) {
	var out bytes.Buffer
	l := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}}))
	w := slogw.New(l, slog.LevelInfo, slog.String("from", "talos")).(*slogw.Writer)
	fmt.Fprint(w, "creating network\nstarting ")
	fmt.Fprint(w, "node 1\n\n")
	fmt.Fprint(w, "tail")
	w.Flush()
	got := strings.Split(strings.TrimSpace(out.String()), "\n")
	want := []string{
		`level=INFO msg="creating network" from=talos`,
		`level=INFO msg="starting node 1" from=talos`,
		`level=INFO msg=tail from=talos`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestNilLoggerDiscards(t *testing.T) {
	w := slogw.New(nil, slog.LevelInfo)
	if n, err := w.Write([]byte("x\n")); n != 2 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
}

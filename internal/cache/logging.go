package cache

import (
	"io"
	"log/slog"
	"os"
	"sync"

	"github.com/sirupsen/logrus"
)

// Distribution logs through logrus's standard logger and offers no way to
// pass another. Left alone it prints a line per request to stderr, and
// library code must not print. So while caches run, its entries at warning
// level and above go to the caches' loggers, and the rest is dropped. This is
// done only when the standard logger still writes to stderr: a program that
// set up logrus itself keeps its own setup.
var logBridge struct {
	sync.Mutex
	// loggers counts the caches using each logger: caches of one set share
	// one, and an entry goes to it once, not once per cache. Distribution's
	// entries do not say which cache they come from.
	loggers   map[*slog.Logger]int
	installed bool
}

type bridgeHook struct{}

func (bridgeHook) Levels() []logrus.Level {
	return []logrus.Level{logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel, logrus.WarnLevel}
}

// quiet are warnings distribution gives in normal proxy operation.
var quiet = map[string]bool{
	"Registry does not implement RepositoryRemover. Will not be able to delete repos and tags": true,
	// The remote blob statter's descriptor cache refuses descriptors without
	// a media type, which registries need not send for blobs.
	"error from cache setting desc": true,
}

func (bridgeHook) Fire(e *logrus.Entry) error {
	if quiet[e.Message] {
		return nil
	}
	logBridge.Lock()
	defer logBridge.Unlock()
	args := []any{"source", "distribution", "distribution.level", e.Level.String()}
	for _, k := range []string{"err.code", "err.message", "err.detail", "http.request.uri", "http.request.method", "http.response.status"} {
		if v, ok := e.Data[k]; ok {
			args = append(args, k, v)
		}
	}
	for l := range logBridge.loggers {
		l.Warn(e.Message, args...)
	}
	return nil
}

func bridgeLogs(l *slog.Logger) (unhook func()) {
	logBridge.Lock()
	defer logBridge.Unlock()
	std := logrus.StandardLogger()
	if !logBridge.installed && std.Out == os.Stderr {
		std.SetOutput(io.Discard)
		std.SetLevel(logrus.WarnLevel)
		std.AddHook(bridgeHook{})
		logBridge.installed = true
		logBridge.loggers = map[*slog.Logger]int{}
	}
	if !logBridge.installed {
		return func() {}
	}
	logBridge.loggers[l]++
	return func() {
		logBridge.Lock()
		if logBridge.loggers[l]--; logBridge.loggers[l] == 0 {
			delete(logBridge.loggers, l)
		}
		logBridge.Unlock()
	}
}

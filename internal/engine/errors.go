package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"syscall"
)

// writeRegistryError answers in the distribution spec's error format, so
// that containerd, skopeo and go-containerregistry show the message.
func writeRegistryError(w http.ResponseWriter, status int, code, msg string) {
	body, _ := json.Marshal(map[string]any{
		"errors": []map[string]string{{"code": code, "message": msg}},
	})
	body = append(body, '\n')
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Del("Docker-Content-Digest")
	h.Del("Etag")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// ErrDiskFull is reported when the cache's storage has no space left.
var ErrDiskFull = errors.New("the cache's disk is full")

// storageError wraps a failure to write storage; a full disk becomes
// ErrDiskFull so that clients get 507 and the real cause.
func storageError(dir string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: writing %s: %v", ErrDiskFull, dir, err)
	}
	return fmt.Errorf("writing the cache's storage %s: %w", dir, err)
}

// writeError answers with what failed, truthfully: the upstream's own answer
// where it gave one, 502/503/504 where it could not be reached, 507 when the
// disk is full.
func (c *Cache) writeError(w http.ResponseWriter, err error) {
	var ue *upstreamError
	switch {
	case errors.As(err, &ue):
		for k, v := range ue.header {
			w.Header()[k] = v
		}
		writeRegistryError(w, ue.status, ue.code, ue.msg)
	case errors.Is(err, ErrDiskFull):
		writeRegistryError(w, http.StatusInsufficientStorage, "UNAVAILABLE", fmt.Sprintf("cache for %s: %v", c.cfg.Host, err))
	case errors.Is(err, errClosing):
		writeRegistryError(w, http.StatusServiceUnavailable, "UNAVAILABLE", fmt.Sprintf("cache for %s is shutting down", c.cfg.Host))
	default:
		writeRegistryError(w, http.StatusBadGateway, "UNAVAILABLE", fmt.Sprintf("cache for %s: %s", c.cfg.Host, c.secrets.redact(err.Error())))
	}
}

var errClosing = errors.New("cache closing")

package engine

import (
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// follow reads another process's download as its part file grows. It
// returns the lock when that process is gone without finishing, nil when the
// blob is stored.
func (f *fill) follow() (*fileLock, error) {
	s := f.c.store
	part, sizePath := s.fillPath(f.dgst, ".part"), s.fillPath(f.dgst, ".size")
	var file *os.File
	var last int64 = -1
	lastChange := time.Now()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if s.statBlob(f.dgst) >= 0 {
			return nil, f.useCommitted()
		}
		lock, err := s.tryLock(s.fillPath(f.dgst, ".lock"))
		if err != nil {
			return nil, storageError(s.root, err)
		}
		if lock != nil {
			return lock, nil
		}
		if st, err := os.Stat(part); err == nil {
			if file != nil {
				if fst, err := file.Stat(); err != nil || !os.SameFile(fst, st) {
					file = nil // a new download replaced it
				}
			}
			if file == nil {
				if file, err = os.Open(part); err == nil {
					f.setFile(file)
					last = -1
				}
			}
			if file != nil && st.Size() != last {
				last, lastChange = st.Size(), time.Now()
				n := st.Size()
				f.update(func() { f.written = n })
			}
			if !f.isSized() {
				if b, err := os.ReadFile(sizePath); err == nil {
					if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil {
						f.update(func() { f.size, f.sized = n, true })
					}
				}
			}
		}
		if time.Since(lastChange) > 2*f.c.cfg.StallTimeout+f.c.cfg.HeaderTimeout {
			f.c.log.Warn("the download of a blob by another process on this storage made no progress: its clients here get an error; the process holding it still does",
				"digest", f.dgst, "bytes", last, "for", time.Since(lastChange).Round(time.Millisecond))
			return nil, &upstreamError{host: f.c.cfg.Host, status: http.StatusGatewayTimeout, code: "UNAVAILABLE",
				msg: fmt.Sprintf("blob %s: the download by another process sharing this cache's storage made no progress for %s", f.dgst, time.Since(lastChange).Round(time.Second))}
		}
		select {
		case <-f.c.ctx.Done():
			return nil, errClosing
		case <-tick.C:
		}
	}
}

func (f *fill) isSized() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sized
}

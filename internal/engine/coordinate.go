package engine

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"time"

	"github.com/opencontainers/go-digest"
)

// lockManifest takes the storage's lock on fetching a manifest, waiting while
// another process holds it (a manifest fetch is short and bounded by ctx).
// If the lock cannot be had, the fetch goes ahead without it: a second GET
// is better than a failed pull. The returned func releases the lock; waited
// says whether another process held it.
func (c *Cache) lockManifest(ctx context.Context, rt route) (unlock func(), waited bool) {
	path := c.store.manifestLockPath(rt.name, rt.ref)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		l, err := c.store.tryLock(path)
		if err != nil {
			c.log.Debug("fetching a manifest without the storage's lock", "ref", rt.String(), "error", err)
			return func() {}, waited
		}
		if l != nil {
			return func() { l.release(true) }, waited
		}
		if !waited {
			c.log.Debug("waiting for another process's fetch of a manifest", "ref", rt.String())
			waited = true
		}
		select {
		case <-ctx.Done():
			c.log.Debug("fetching a manifest without the storage's lock: another process holds it too long", "ref", rt.String())
			return func() {}, waited
		case <-tick.C:
		}
	}
}

// coarseClock is how far a file's time may lag the clock: Linux stamps
// files from a coarse clock that advances a tick (up to 10 ms) at a time.
const coarseClock = 50 * time.Millisecond

// fetchedSince returns what another process's fetch of rt ended with (ok
// true): a tag now fresh by this cache's own rules, a digest stored and
// linked to the repository, or, when this process waited for the lock, the
// upstream failure (5xx, timeout, unreachable) the holder recorded since
// start. Refusals (401, 403, 404, 429) are not shared: they may depend on
// credentials, and processes on one storage need not share those. With ok
// false, this process fetches.
func (c *Cache) fetchedSince(rt route, start time.Time, waited bool) (m manifest, ok bool, err error) {
	var d digest.Digest
	if rt.isDigest() {
		d = digest.Digest(rt.ref)
		_, ok = c.store.linked(rt.name, d)
	} else {
		// The tag was missing when this request looked: present now, and
		// confirmed since then or within the tag TTL, someone fetched it.
		var checked time.Time
		d, checked, ok = c.store.tag(rt.name, rt.ref)
		ok = ok && (!checked.Before(start.Add(-coarseClock)) ||
			(c.cfg.TagTTL > 0 && time.Since(checked) < c.cfg.TagTTL) || c.cfg.Mode == Offline)
	}
	if ok {
		if mt, payload, found := c.storedManifest(d); found {
			return manifest{d, mt, payload}, true, nil
		}
	}
	if !waited {
		return manifest{}, false, nil
	}
	if e, found := c.sharedFailure(rt, start); found {
		return manifest{}, true, e
	}
	return manifest{}, false, nil
}

// fleetRecord is what instances of a fleet tell each other about a manifest:
// the manifest, or the upstream's failure.
type fleetRecord struct {
	// At is when upstream answered, Unix nanoseconds: a tag taken from the
	// record counts as confirmed then, not when it was read.
	At        int64         `json:"at"`
	Digest    digest.Digest `json:"digest,omitempty"`
	MediaType string        `json:"mediaType,omitempty"`
	Payload   []byte        `json:"payload,omitempty"`
	Failure   *sharedError  `json:"failure,omitempty"`
}

func fleetKey(rt route) string { return rt.name + "@" + rt.ref }

// manifestFromFleet asks the fleet for rt: ok true with what another
// instance fetched (stored here too) or its failure; ok false with held
// true when this instance holds the fleet's claim and is to fetch.
func (c *Cache) manifestFromFleet(rt route) (m manifest, ok, held bool, err error) {
	ctx, cancel := context.WithTimeout(c.ctx, 2*(c.cfg.HeaderTimeout+c.cfg.StallTimeout))
	defer cancel()
	b, ok, ferr := c.cfg.Fleet.Manifest(ctx, fleetKey(rt))
	if ferr != nil {
		c.log.Warn("fleet coordination unavailable; fetching a manifest from upstream alone", "ref", rt.String(), "error", ferr)
		return manifest{}, false, false, nil
	}
	if !ok {
		return manifest{}, false, true, nil
	}
	var rec fleetRecord
	if json.Unmarshal(b, &rec) != nil {
		return manifest{}, false, false, nil
	}
	if f := rec.Failure; f != nil && f.Status >= 400 {
		return manifest{}, true, false, &upstreamError{host: c.cfg.Host, status: f.Status, code: f.Code, msg: f.Msg, header: f.Header}
	}
	d := digest.FromBytes(rec.Payload)
	if d != rec.Digest || (rt.isDigest() && d.String() != rt.ref) || rec.MediaType == "" {
		c.log.Warn("the fleet's record of a manifest does not match its digest; fetching it", "ref", rt.String())
		return manifest{}, false, false, nil
	}
	m = manifest{d, rec.MediaType, rec.Payload}
	if err := c.storeManifest(rt, m); err != nil {
		c.log.Warn("storing a manifest", "ref", rt.String(), "error", err)
	} else if !rt.isDigest() && rec.At > 0 {
		_ = c.store.touchTag(rt.name, rt.ref, time.Unix(0, rec.At))
	}
	return m, true, false, nil
}

// manifestToFleet ends this instance's claim on rt, sharing the manifest or
// the upstream's failure (a caller that went away shares nothing).
func (c *Cache) manifestToFleet(rt route, m manifest, err error) {
	rec := fleetRecord{At: time.Now().UnixNano()}
	ttl := fleetManifestTTL
	if !rt.isDigest() && c.cfg.TagTTL < ttl {
		// A tag is not shared for longer than this cache serves it unasked
		// (not at all when it always asks).
		ttl = c.cfg.TagTTL
	}
	var ue *upstreamError
	switch {
	case err == nil:
		rec.Digest, rec.MediaType, rec.Payload = m.digest, m.mediaType, m.payload
	case errors.As(err, &ue):
		rec.Failure, ttl = &sharedError{Status: ue.status, Code: ue.code, Msg: ue.msg, Header: ue.header}, failureTTL
	}
	var b []byte
	if (err == nil || rec.Failure != nil) && ttl > 0 {
		b, _ = json.Marshal(rec)
	}
	c.cfg.Fleet.ManifestDone(context.WithoutCancel(c.ctx), fleetKey(rt), b, ttl)
}

// sharedError is an upstream failure as one process tells the others that
// waited for the same manifest: only what the client would see (messages
// are already redacted), never credentials.
type sharedError struct {
	At     int64       `json:"at,omitempty"` // when the fetch failed, Unix nanoseconds
	Status int         `json:"status"`
	Code   string      `json:"code"`
	Msg    string      `json:"msg"`
	Header http.Header `json:"header,omitempty"`
}

func (c *Cache) shareFailure(rt route, e *upstreamError) {
	b, err := json.Marshal(sharedError{At: time.Now().UnixNano(), Status: e.status, Code: e.code, Msg: e.msg, Header: e.header})
	if err == nil {
		err = c.store.writeFile(c.store.manifestLockPath(rt.name, rt.ref)+".err", b)
	}
	if err != nil {
		c.log.Debug("recording a failed manifest fetch for other processes", "ref", rt.String(), "error", err)
	}
}

func (c *Cache) sharedFailure(rt route, start time.Time) (*upstreamError, bool) {
	b, err := os.ReadFile(c.store.manifestLockPath(rt.name, rt.ref) + ".err")
	var se sharedError
	if err != nil || json.Unmarshal(b, &se) != nil || se.Status < 500 || se.At < start.UnixNano() {
		return nil, false
	}
	return &upstreamError{host: c.cfg.Host, status: se.Status, code: se.Code, msg: se.Msg, header: se.Header}, true
}

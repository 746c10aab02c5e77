package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// upstream is the cache's only way out: GET and HEAD of the pull paths of
// one registry, with bounded waits, credentials and the token dance. Nothing
// else can reach it: there is no listener in between.
type upstream struct {
	host string // registry host, for messages
	// endpoints are tried in order: fleet tiers first, the origin last.
	endpoints []*endpoint
	creds     *credentials // for the origin only: a fleet tier never sees them
	client    *http.Client
	base      *http.Transport
	header    time.Duration
	tier      time.Duration // header timeout of an endpoint that is not the last
	stats     *counters
	secrets   *secrets
	log       *slog.Logger

	mu      sync.Mutex
	tokens  map[string]bearer // by endpoint and scope
	refresh string            // the origin's OAuth2 refresh token, rotated as the server says
}

func newUpstream(host string, remotes []*url.URL, creds *credentials, dial, header, tier time.Duration, stats *counters, sec *secrets, log *slog.Logger) *upstream {
	base := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: dial, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   dial,
		ResponseHeaderTimeout: header,
		ExpectContinueTimeout: time.Second,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
	u := &upstream{host: host, creds: creds, refresh: creds.identityToken, base: base, header: header, tier: tier, stats: stats, secrets: sec, log: log, tokens: map[string]bearer{}}
	for _, r := range remotes {
		u.endpoints = append(u.endpoints, newEndpoint(r))
	}
	u.client = &http.Client{
		Transport: countingTransport{base, stats},
		// Registries send blobs to a CDN on another host; the credentials
		// are for the registry alone.
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 10 {
				return errors.New("more than 10 redirects")
			}
			if req.URL.Host != via[0].URL.Host {
				req.Header.Del("Authorization")
			}
			return nil
		},
	}
	return u
}

// countingTransport counts every request sent upstream (token requests and
// redirects included) and every body byte read back.
type countingTransport struct {
	next  http.RoundTripper
	stats *counters
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.stats.upstreamRequests.Add(1)
	resp, err := c.next.RoundTrip(r)
	if err == nil && resp.Body != nil {
		resp.Body = &countingBody{ReadCloser: resp.Body, n: &c.stats.upstreamBytes}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// drain reads what is left of a body, so the byte counts match what the
// upstream sent, and closes it. Bodies past 1 MiB are closed instead.
func drain(body io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, body, 1<<20)
	body.Close()
}

// do sends one pull request for a repository ("manifests/<ref>" or
// "blobs/<digest>" under /v2/<name>/) to the first endpoint that answers it
// with a success, trying fleet tiers in order and the origin last. A tier
// that fails is skipped for a back-off period; a tier's answer must start
// within the tier timeout. The last endpoint's answer is returned whatever it
// is. The caller closes the body of a response; err is an *upstreamError
// when no endpoint could be reached.
func (u *upstream) do(ctx context.Context, method, repo, rest string, accept []string) (*http.Response, error) {
	if method != http.MethodGet && method != http.MethodHead {
		return nil, fmt.Errorf("method %s is not a pull", method)
	}
	for i, ep := range u.endpoints {
		last := i == len(u.endpoints)-1
		if !last && ep.isDown() {
			continue
		}
		resp, err := u.doOne(ctx, ep, last, method, repo, rest, accept)
		if last {
			if err == nil && (resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests) {
				ep.markDown()
			}
			return resp, err
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			u.log.Warn("fleet tier failed; trying the next endpoint", "endpoint", ep.label, "error", err)
			continue
		}
		if resp.StatusCode/100 == 2 {
			return resp, nil
		}
		e := u.statusError(resp, repo+" "+rest)
		if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
			ep.markDown()
		}
		u.log.Warn("fleet tier answered an error; trying the next endpoint", "endpoint", ep.label, "error", e.msg)
	}
	return nil, errors.New("no endpoints") // unreachable: the origin is always last
}

func (u *upstream) doOne(ctx context.Context, ep *endpoint, last bool, method, repo, rest string, accept []string) (*http.Response, error) {
	name := repo
	if ep.prefix != "" {
		name = ep.prefix + "/" + repo
	}
	target := *ep.remote
	rest, query, _ := strings.Cut(rest, "?")
	target.Path = "/v2/" + name + "/" + rest
	target.RawQuery = query
	scope := "repository:" + name + ":pull"
	params, err := u.challengeFor(ctx, ep, last)
	if err != nil {
		return nil, err
	}
	// A registry token is the bearer token itself: no token dance.
	useRegistryToken := last && u.creds.registryToken != ""
	if params != nil && !useRegistryToken && !u.hasToken(ep, scope) {
		if err := u.fetchToken(ctx, ep, last, params, scope); err != nil {
			return nil, err
		}
	}
	for attempt := 0; ; attempt++ {
		reqCtx, cancel := context.WithCancel(ctx)
		var timer *time.Timer
		if !last && u.tier > 0 {
			timer = time.AfterFunc(u.tier, cancel)
		}
		req, err := http.NewRequestWithContext(reqCtx, method, target.String(), nil)
		if err != nil {
			cancel()
			return nil, err
		}
		for _, a := range accept {
			req.Header.Add("Accept", a)
		}
		req.Header.Set("User-Agent", "pullthrough")
		u.authorize(req, ep, last, scope)
		ep.requests.Add(1)
		resp, err := u.client.Do(req)
		if timer != nil && !timer.Stop() && err == nil {
			// The tier timeout fired as the answer came: treat it as late.
			resp.Body.Close()
			err = context.DeadlineExceeded
		}
		if err != nil {
			cancel()
			return nil, u.transportError(ctx, ep, err)
		}
		resp.Body = &endpointBody{ReadCloser: resp.Body, ep: ep, cancel: cancel}
		if resp.StatusCode/100 == 2 {
			ep.markUp()
		}
		if resp.StatusCode != http.StatusUnauthorized || attempt > 0 {
			return resp, nil
		}
		challenge := resp.Header.Get("Www-Authenticate")
		scheme, params := parseChallenge(challenge)
		switch {
		case scheme == "bearer" && params["realm"] != "" && !useRegistryToken:
			drain(resp.Body)
			ep.mu.Lock()
			ep.pinged, ep.challenge = true, params
			ep.mu.Unlock()
			if err := u.fetchToken(ctx, ep, last, params, scope); err != nil {
				return nil, err
			}
		case scheme == "basic" && last && u.creds.hasBasic():
			drain(resp.Body)
			u.mu.Lock()
			u.tokens[ep.label+" "+scope] = bearer{} // basic from now on
			u.mu.Unlock()
		default:
			return resp, nil
		}
	}
}

const (
	minBackoff = time.Second
	maxBackoff = 30 * time.Second
)

package engine

import (
	"context"
	"encoding/json"
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
	"syscall"
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

	mu     sync.Mutex
	tokens map[string]bearer // by endpoint and scope
}

// endpoint is one place a cache fetches from: a fleet tier (another cache,
// Harbor, registry:2, zot) or the origin registry. A path in its URL is a
// repository prefix, as Harbor projects and zot prefixes use
// (https://harbor.example/v2/dockerhub-proxy or https://harbor.example/dockerhub-proxy).
type endpoint struct {
	remote *url.URL // scheme and host only
	prefix string   // repository prefix, without slashes at either end
	label  string   // for messages and counters: scheme, host, prefix

	downUntil atomic.Int64 // unix nanos: skipped (if not the last) until then
	backoff   atomic.Int64
	requests  atomic.Int64
	bytes     atomic.Int64

	// challenge is the endpoint's bearer challenge, learnt from its /v2/
	// (or any 401): with it, a token for a new repository is fetched before
	// the first request, not after a 401 that registries count as a pull.
	mu        sync.Mutex
	pinged    bool
	challenge map[string]string // nil: no bearer auth here
}

func newEndpoint(u *url.URL) *endpoint {
	r := &url.URL{Scheme: u.Scheme, Host: u.Host}
	p := strings.Trim(u.Path, "/")
	p = strings.Trim(strings.TrimPrefix(p, "v2"), "/")
	label := r.String()
	if p != "" {
		label += "/" + p
	}
	return &endpoint{remote: r, prefix: p, label: label}
}

func (e *endpoint) isDown() bool { return time.Now().UnixNano() < e.downUntil.Load() }

func (e *endpoint) markDown() {
	b := time.Duration(e.backoff.Load())
	if b < minBackoff {
		b = minBackoff
	} else if b *= 2; b > maxBackoff {
		b = maxBackoff
	}
	e.backoff.Store(int64(b))
	e.downUntil.Store(time.Now().Add(b).UnixNano())
}

func (e *endpoint) markUp() {
	if e.backoff.Load() != 0 {
		e.backoff.Store(0)
		e.downUntil.Store(0)
	}
}

type bearer struct {
	token   string
	expires time.Time
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
	u := &upstream{host: host, creds: creds, base: base, header: header, tier: tier, stats: stats, secrets: sec, log: log, tokens: map[string]bearer{}}
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
	target.Path = "/v2/" + name + "/" + rest
	scope := "repository:" + name + ":pull"
	params, err := u.challengeFor(ctx, ep, last)
	if err != nil {
		return nil, err
	}
	if params != nil && !u.hasToken(ep, scope) {
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
		case scheme == "bearer" && params["realm"] != "":
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

// challengeFor returns the endpoint's bearer challenge, pinging /v2/ once to
// learn it, as registry clients do. An endpoint that cannot be reached is
// that error, at once: the request would only wait for it again.
func (u *upstream) challengeFor(ctx context.Context, ep *endpoint, last bool) (map[string]string, error) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.pinged {
		return ep.challenge, nil
	}
	ping := *ep.remote
	ping.Path = "/v2/"
	pctx, cancel := context.WithTimeout(ctx, u.header)
	defer cancel()
	if !last && u.tier > 0 {
		pctx, cancel = context.WithTimeout(pctx, u.tier)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(pctx, http.MethodGet, ping.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "pullthrough")
	ep.requests.Add(1)
	resp, err := u.client.Do(req)
	if err != nil {
		return nil, u.transportError(ctx, ep, err)
	}
	resp.Body = &endpointBody{ReadCloser: resp.Body, ep: ep, cancel: func() {}}
	drain(resp.Body)
	ep.pinged = true
	if resp.StatusCode == http.StatusUnauthorized {
		if scheme, params := parseChallenge(resp.Header.Get("Www-Authenticate")); scheme == "bearer" && params["realm"] != "" {
			ep.challenge = params
		}
	}
	return ep.challenge, nil
}

func (u *upstream) hasToken(ep *endpoint, scope string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	b, ok := u.tokens[ep.label+" "+scope]
	return ok && (b.token == "" || time.Now().Before(b.expires))
}

// endpointBody counts the bytes an endpoint served and ends the request's
// context when closed.
type endpointBody struct {
	io.ReadCloser
	ep     *endpoint
	cancel context.CancelFunc
}

func (b *endpointBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.ep.bytes.Add(int64(n))
	return n, err
}

func (b *endpointBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

func (u *upstream) origin() *endpoint { return u.endpoints[len(u.endpoints)-1] }

// isDown reports that every endpoint failed recently: tag revalidations then
// serve the cached copy at once.
func (u *upstream) isDown() bool {
	for _, ep := range u.endpoints {
		if !ep.isDown() {
			return false
		}
	}
	return true
}

func (u *upstream) authorize(req *http.Request, ep *endpoint, last bool, scope string) {
	u.mu.Lock()
	b, ok := u.tokens[ep.label+" "+scope]
	u.mu.Unlock()
	switch {
	case ok && b.token != "" && time.Now().Before(b.expires):
		req.Header.Set("Authorization", "Bearer "+b.token)
	case ok && b.token == "" && last && u.creds.hasBasic():
		req.SetBasicAuth(u.creds.user, u.creds.password)
	case last && u.creds.registryToken != "":
		req.Header.Set("Authorization", "Bearer "+u.creds.registryToken)
	}
}

// fetchToken is the token dance of the distribution spec: GET the realm
// with service and scope, with the credentials if there are any.
func (u *upstream) fetchToken(ctx context.Context, ep *endpoint, last bool, params map[string]string, scope string) error {
	realm, err := url.Parse(params["realm"])
	if err != nil || (realm.Scheme != "https" && realm.Scheme != "http") {
		return &upstreamError{host: u.host, status: http.StatusBadGateway, code: "UNAVAILABLE",
			msg: fmt.Sprintf("upstream %s sent a token realm that is not an http(s) URL", u.host)}
	}
	q := realm.Query()
	if s := params["service"]; s != "" {
		q.Set("service", s)
	}
	q.Set("scope", scope)
	realm.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, realm.String(), nil)
	if err != nil {
		return err
	}
	if last && u.creds.hasBasic() {
		req.SetBasicAuth(u.creds.user, u.creds.password)
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return u.transportError(ctx, ep, err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	drain(resp.Body)
	if resp.StatusCode != http.StatusOK {
		status := resp.StatusCode
		if status != http.StatusUnauthorized && status != http.StatusForbidden {
			status = http.StatusBadGateway
		}
		return &upstreamError{host: u.host, status: status, code: codeFor(status),
			msg: fmt.Sprintf("upstream %s refused a token for %s: %s", u.host, scope, u.secrets.redact(summarize(resp.Status, body)))}
	}
	var tok struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	if err := json.Unmarshal(body, &tok); err != nil || (tok.Token == "" && tok.AccessToken == "") {
		return &upstreamError{host: u.host, status: http.StatusBadGateway, code: "UNAVAILABLE",
			msg: fmt.Sprintf("upstream %s answered its token request without a token", u.host)}
	}
	t := tok.Token
	if t == "" {
		t = tok.AccessToken
	}
	ttl := time.Duration(tok.ExpiresIn) * time.Second
	if ttl < time.Minute {
		ttl = time.Minute // the spec's floor
	}
	u.secrets.add(t)
	u.mu.Lock()
	u.tokens[ep.label+" "+scope] = bearer{token: t, expires: time.Now().Add(ttl - 10*time.Second)}
	u.mu.Unlock()
	return nil
}

// parseChallenge reads a WWW-Authenticate header: a scheme and its
// comma-separated key="value" parameters.
func parseChallenge(h string) (scheme string, params map[string]string) {
	params = map[string]string{}
	scheme, rest, _ := strings.Cut(strings.TrimSpace(h), " ")
	scheme = strings.ToLower(scheme)
	for rest != "" {
		var kv string
		rest = strings.TrimSpace(rest)
		if i := indexUnquoted(rest, ','); i >= 0 {
			kv, rest = rest[:i], rest[i+1:]
		} else {
			kv, rest = rest, ""
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		params[strings.ToLower(strings.TrimSpace(k))] = strings.Trim(strings.TrimSpace(v), `"`)
	}
	return scheme, params
}

func indexUnquoted(s string, c byte) int {
	quoted := false
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '"':
			quoted = !quoted
		case s[i] == c && !quoted:
			return i
		}
	}
	return -1
}

// upstreamError is a failure to get an answer worth passing on, with the
// status and registry error code the client gets.
type upstreamError struct {
	host   string
	status int
	code   string
	msg    string
	header http.Header // passed on: Retry-After, rate limit headers
	err    error
}

func (e *upstreamError) Error() string { return e.msg }
func (e *upstreamError) Unwrap() error { return e.err }

// transportError says what went wrong reaching an endpoint (nil: the
// origin), and marks it down for a while.
func (u *upstream) transportError(ctx context.Context, ep *endpoint, err error) error {
	if ctx.Err() != nil && context.Cause(ctx) == context.Canceled {
		return err // the caller went away
	}
	if ep == nil {
		ep = u.origin()
	}
	ep.markDown()
	e := &upstreamError{host: u.host, status: http.StatusBadGateway, code: "UNAVAILABLE", err: err}
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		e.msg = fmt.Sprintf("upstream %s is unreachable: connection refused", u.host)
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
		e.status = http.StatusGatewayTimeout
		e.msg = fmt.Sprintf("upstream %s did not answer in time (header timeout %s): %s", u.host, u.header, u.secrets.redact(rootCause(err)))
	default:
		e.msg = fmt.Sprintf("upstream %s is unreachable: %s", u.host, u.secrets.redact(rootCause(err)))
	}
	return e
}

// rootCause drops url.Error's "Get <url>:" prefix, which repeats the path.
func rootCause(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}

// statusError turns an upstream answer that is not a success into the error
// the client gets: the upstream's own status and reason for 401, 403, 404 and
// 429, and 502 or 503 (never 500) for upstream failures.
func (u *upstream) statusError(resp *http.Response, what string) *upstreamError {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	drain(resp.Body)
	reason := u.secrets.redact(summarize(resp.Status, body))
	e := &upstreamError{host: u.host, status: resp.StatusCode, code: upstreamCode(body)}
	switch s := resp.StatusCode; {
	case s == http.StatusUnauthorized || s == http.StatusForbidden:
		e.msg = fmt.Sprintf("upstream %s refused access to %s: %s", u.host, what, reason)
		u.log.Warn("upstream refused access; check this upstream's credentials", "what", what, "status", resp.Status, "with_credentials", u.creds.any())
	case s == http.StatusNotFound:
		e.msg = fmt.Sprintf("upstream %s: %s not found: %s", u.host, what, reason)
	case s == http.StatusTooManyRequests:
		e.msg = fmt.Sprintf("upstream %s is rate limiting this cache: %s", u.host, reason)
		e.header = http.Header{}
		for k, v := range resp.Header {
			if k == "Retry-After" || strings.HasPrefix(strings.ToLower(k), "ratelimit") {
				e.header[k] = v
			}
		}
	case s >= 500:
		if s != http.StatusServiceUnavailable && s != http.StatusGatewayTimeout {
			e.status = http.StatusBadGateway
		}
		e.msg = fmt.Sprintf("upstream %s failed: %s", u.host, reason)
	default:
		e.status = http.StatusBadGateway
		e.msg = fmt.Sprintf("upstream %s answered %s for %s: %s", u.host, resp.Status, what, reason)
	}
	if e.code == "" {
		e.code = codeFor(e.status)
	}
	return e
}

// summarize is the status and the first error message of a registry error
// body, or the status alone.
func summarize(status string, body []byte) string {
	var b struct {
		Errors []struct{ Code, Message string }
	}
	if json.Unmarshal(body, &b) == nil && len(b.Errors) > 0 && b.Errors[0].Message != "" {
		return status + ": " + trunc(b.Errors[0].Message)
	}
	return status
}

func upstreamCode(body []byte) string {
	var b struct{ Errors []struct{ Code string } }
	if json.Unmarshal(body, &b) == nil && len(b.Errors) > 0 && codeRE.MatchString(b.Errors[0].Code) {
		return b.Errors[0].Code
	}
	return ""
}

func codeFor(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return "UNAUTHORIZED"
	case http.StatusForbidden:
		return "DENIED"
	case http.StatusNotFound:
		return "NOT_FOUND"
	case http.StatusTooManyRequests:
		return "TOOMANYREQUESTS"
	}
	return "UNAVAILABLE"
}

const (
	minBackoff = time.Second
	maxBackoff = 30 * time.Second
)

// markDown marks the origin down (a failure seen after do returned).
func (u *upstream) markDown() { u.origin().markDown() }

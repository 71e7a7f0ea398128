package proxy

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestSecretsNeverLogged runs allowed, denied, terminated and failing
// requests carrying a secret in headers and query strings, with debug
// logging on, and greps the log and the audit events for it.
func TestSecretsNeverLogged(t *testing.T) {
	const secret = "sk-test-0123456789abcdef"
	var logs syncBuffer
	e := newEnv(t, envOptions{
		intercept: interceptAPI,
		log:       slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		modify:    func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+secret) },
	})

	do := func(c *http.Client, u string) {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
		req.Header.Set("Authorization", "Bearer "+secret)
		req.Header.Set("Cookie", "s="+secret)
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
	}
	plain, term := e.client(nil, false), e.client(proxyPool, true)
	do(plain, fmt.Sprintf("http://api.test:%d/p?key=%s", port(t, e.up.plain), secret))
	do(plain, fmt.Sprintf("http://denied.test:%d/p?key=%s", port(t, e.up.plain), secret))
	do(term, fmt.Sprintf("https://api.test:%d/p?key=%s", port(t, e.up.tls), secret))
	do(plain, fmt.Sprintf("http://api.test:1/unreachable?key=%s", secret)) // 502 path

	if !strings.Contains(logs.String(), "api.test:1") {
		t.Errorf("the failing request was not logged; the check would prove nothing:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), secret) {
		t.Errorf("log contains the secret:\n%s", logs.String())
	}
	for _, ev := range e.Events() {
		if strings.Contains(fmt.Sprintf("%+v", ev), secret) {
			t.Errorf("audit event contains the secret: %+v", ev)
		}
	}
	if len(e.Events()) < 4 {
		t.Errorf("only %d events audited", len(e.Events()))
	}
}

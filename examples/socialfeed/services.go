// Package socialfeed is the social-feed example behind `portico demo`: six
// small JSON services (profiles, posts, recommendations, notification counts,
// ads, analytics), a demo identity provider with a JWKS, and the gateway
// configuration (a platform file plus one file per BFF) embedded in the binary.
//
// The services answer with realistic, deterministic JSON derived from the
// user id and add a small random latency, so fan-out and shaping behave as
// they would against real services.
package socialfeed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Service is one example service.
type Service struct {
	Name    string
	Addr    string
	Handler http.Handler
}

// Latency is the random delay each service adds per request, uniformly
// between Min and Max.
type Latency struct{ Min, Max time.Duration }

// DefaultLatency is small enough for a snappy demo and large enough to show
// that the gateway fans out in parallel.
var DefaultLatency = Latency{Min: 2 * time.Millisecond, Max: 12 * time.Millisecond}

// Services returns the six services on the demo addresses 127.0.0.1:7001-7006.
func Services(lat Latency) []Service {
	return []Service{
		{Name: "users", Addr: "127.0.0.1:7001", Handler: Users(lat)},
		{Name: "posts", Addr: "127.0.0.1:7002", Handler: Posts(lat)},
		{Name: "recommendations", Addr: "127.0.0.1:7003", Handler: Recommendations(lat)},
		{Name: "notifications", Addr: "127.0.0.1:7004", Handler: Notifications(lat)},
		{Name: "ads", Addr: "127.0.0.1:7005", Handler: Ads(lat)},
		{Name: "analytics", Addr: "127.0.0.1:7006", Handler: Analytics(lat)},
	}
}

// Servers runs handlers on their addresses until Close.
type Servers struct {
	servers []*http.Server
	wg      sync.WaitGroup
}

// Start listens on every service's address and serves it. It fails, closing
// what it opened, when an address is taken.
func Start(services []Service, logger *slog.Logger) (*Servers, error) {
	s := &Servers{}
	for _, svc := range services {
		ln, err := net.Listen("tcp", svc.Addr)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("example service %s: %w", svc.Name, err)
		}
		srv := &http.Server{Handler: svc.Handler, ReadHeaderTimeout: 5 * time.Second}
		s.servers = append(s.servers, srv)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && logger != nil {
				logger.Error("example service stopped", "service", svc.Name, "err", err)
			}
		}()
	}
	return s, nil
}

// Close stops every server and waits for them.
func (s *Servers) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, srv := range s.servers {
		_ = srv.Shutdown(ctx)
	}
	s.wg.Wait()
}

func (l Latency) wait(ctx context.Context) {
	if l.Max <= 0 {
		return
	}
	d := l.Min
	if l.Max > l.Min {
		d += rand.N(l.Max - l.Min)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func healthz(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
}

// seed gives each user a stable pseudo-random stream.
func seed(parts ...string) *rand.Rand {
	h := fnv.New64a()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	v := h.Sum64()
	return rand.New(rand.NewPCG(v, v>>17|1))
}

var (
	firstNames = []string{"Alice", "Bruno", "Chen", "Dalia", "Emeka", "Farah", "Goran", "Hana", "Ines", "Jonas", "Kavya", "Lior"}
	lastNames  = []string{"Moreau", "Okafor", "Silva", "Tanaka", "Novak", "Haddad", "Larsen", "Ibrahim", "Rossi", "Kim"}
	cities     = []string{"Lisbon", "Lagos", "Osaka", "Tallinn", "Montréal", "Nairobi", "Valparaíso", "Utrecht"}
	topics     = []string{"climbing", "synths", "sourdough", "typography", "rust", "go", "birding", "chess", "urbanism", "jazz"}
	phrases    = []string{
		"Just shipped the thing we talked about last week.",
		"Anyone else think the new bike lanes are great?",
		"Three hours of debugging, one missing semicolon.",
		"Morning light over the harbour today.",
		"Reading about consistent hashing again, it never gets old.",
		"New recipe: rye sourdough with caraway. Recommended.",
		"The conference talk is online, slides in the thread.",
		"Hot take: tabs for indentation, spaces for alignment.",
	}
)

type profile struct {
	ID        string         `json:"id"`
	Name      string         `json:"name"`
	Handle    string         `json:"handle"`
	AvatarURL string         `json:"avatar_url"`
	Bio       string         `json:"bio"`
	Location  string         `json:"location"`
	Joined    string         `json:"joined"`
	Followers int            `json:"followers"`
	Following int            `json:"following"`
	Verified  bool           `json:"verified"`
	Links     []string       `json:"links"`
	Settings  map[string]any `json:"settings"`
}

func makeProfile(id string) profile {
	r := seed("user", id)
	first, last := firstNames[r.IntN(len(firstNames))], lastNames[r.IntN(len(lastNames))]
	return profile{
		ID:        id,
		Name:      first + " " + last,
		Handle:    "@" + id,
		AvatarURL: "https://cdn.portico.demo/avatars/" + id + ".jpg",
		Bio:       "Writes about " + topics[r.IntN(len(topics))] + " and " + topics[r.IntN(len(topics))] + ".",
		Location:  cities[r.IntN(len(cities))],
		Joined:    time.Date(2015+r.IntN(10), time.Month(1+r.IntN(12)), 1+r.IntN(28), 0, 0, 0, 0, time.UTC).Format(time.RFC3339),
		Followers: r.IntN(50000),
		Following: r.IntN(2000),
		Verified:  r.IntN(4) == 0,
		Links:     []string{"https://example.org/" + id},
		Settings: map[string]any{
			"theme": "dark", "language": "en", "email_digest": "weekly",
			"privacy": map[string]any{"discoverable": true, "dm_open": false},
		},
	}
}

// Users serves GET /users/{id}: a full profile.
func Users(lat Latency) http.Handler {
	mux := http.NewServeMux()
	healthz(mux)
	mux.HandleFunc("GET /users/{id}", func(w http.ResponseWriter, r *http.Request) {
		lat.wait(r.Context())
		writeJSON(w, http.StatusOK, makeProfile(r.PathValue("id")))
	})
	return mux
}

// Posts serves GET /feed/{user}?limit=N: the user's home feed, newest first.
// Post ids are 64-bit integers above 2^53, so a gateway that round-trips
// numbers through float64 corrupts them.
func Posts(lat Latency) http.Handler {
	mux := http.NewServeMux()
	healthz(mux)
	mux.HandleFunc("GET /feed/{user}", func(w http.ResponseWriter, r *http.Request) {
		lat.wait(r.Context())
		user := r.PathValue("user")
		limit := 20
		if v, err := strconv.Atoi(r.URL.Query().Get("limit")); err == nil && v > 0 && v <= 100 {
			limit = v
		}
		rnd := seed("feed", user)
		base := time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC)
		items := make([]map[string]any, 0, limit)
		for i := range limit {
			author := fmt.Sprintf("user%d", rnd.IntN(500))
			ap := makeProfile(author)
			id := uint64(1)<<60 + rnd.Uint64N(1<<59)
			items = append(items, map[string]any{
				"id":         json.Number(strconv.FormatUint(id, 10)),
				"text":       phrases[rnd.IntN(len(phrases))],
				"created_at": base.Add(-time.Duration(i*17+rnd.IntN(15)) * time.Minute).Format(time.RFC3339),
				"author":     map[string]any{"id": author, "name": ap.Name, "handle": ap.Handle, "avatar_url": ap.AvatarURL, "verified": ap.Verified},
				"likes":      rnd.IntN(900),
				"reposts":    rnd.IntN(120),
				"replies":    rnd.IntN(60),
				"media": []map[string]any{{
					"type": "image", "url": fmt.Sprintf("https://cdn.portico.demo/media/%d.jpg", id),
					"width": 1200, "height": 800, "alt": "photo attached to the post",
				}},
				"tags":       []string{topics[rnd.IntN(len(topics))], topics[rnd.IntN(len(topics))]},
				"visibility": "public",
				"lang":       "en",
			})
		}
		writeJSON(w, http.StatusOK, map[string]any{"items": items, "next_cursor": fmt.Sprintf("c_%s_%d", user, limit)})
	})
	return mux
}

// Recommendations serves GET /for/{user}: people and topics to follow.
func Recommendations(lat Latency) http.Handler {
	mux := http.NewServeMux()
	healthz(mux)
	mux.HandleFunc("GET /for/{user}", func(w http.ResponseWriter, r *http.Request) {
		lat.wait(r.Context())
		rnd := seed("rec", r.PathValue("user"))
		users := make([]map[string]any, 0, 5)
		for range 5 {
			id := fmt.Sprintf("user%d", rnd.IntN(500))
			p := makeProfile(id)
			users = append(users, map[string]any{"id": id, "name": p.Name, "avatar_url": p.AvatarURL, "reason": "followed by people you follow", "score": rnd.Float64()})
		}
		ts := []string{topics[rnd.IntN(len(topics))], topics[rnd.IntN(len(topics))], topics[rnd.IntN(len(topics))]}
		writeJSON(w, http.StatusOK, map[string]any{"users": users, "topics": ts})
	})
	return mux
}

// Notifications serves GET /count/{user} and GET /list/{user}.
func Notifications(lat Latency) http.Handler {
	mux := http.NewServeMux()
	healthz(mux)
	mux.HandleFunc("GET /count/{user}", func(w http.ResponseWriter, r *http.Request) {
		lat.wait(r.Context())
		writeJSON(w, http.StatusOK, map[string]int{"count": seed("notif", r.PathValue("user")).IntN(30)})
	})
	mux.HandleFunc("GET /list/{user}", func(w http.ResponseWriter, r *http.Request) {
		lat.wait(r.Context())
		rnd := seed("notif", r.PathValue("user"))
		n := rnd.IntN(30)
		items := make([]map[string]any, 0, min(n, 10))
		kinds := []string{"like", "reply", "follow", "mention", "repost"}
		for i := range min(n, 10) {
			from := fmt.Sprintf("user%d", rnd.IntN(500))
			items = append(items, map[string]any{
				"id": fmt.Sprintf("n%d", i), "kind": kinds[rnd.IntN(len(kinds))], "from": from,
				"from_name": makeProfile(from).Name, "read": false,
				"at": time.Date(2026, 11, 28, 8, 0, 0, 0, time.UTC).Add(-time.Duration(i*9) * time.Minute).Format(time.RFC3339),
			})
		}
		writeJSON(w, http.StatusOK, map[string]any{"items": items, "unread": n})
	})
	return mux
}

// Ads serves GET /slots?user=ID: ad slots plus tracking data that a BFF
// usually drops.
func Ads(lat Latency) http.Handler {
	mux := http.NewServeMux()
	healthz(mux)
	mux.HandleFunc("GET /slots", func(w http.ResponseWriter, r *http.Request) {
		lat.wait(r.Context())
		user := r.URL.Query().Get("user")
		rnd := seed("ads", user)
		slots := []map[string]any{
			{"id": "slot-top", "advertiser": "Harbour Coffee", "headline": "Fresh roast, every morning", "image": "https://cdn.portico.demo/ads/coffee.jpg", "cta": "Order now"},
			{"id": "slot-feed-5", "advertiser": "Trailhead Gear", "headline": "Ropes for every crag", "image": "https://cdn.portico.demo/ads/ropes.jpg", "cta": "Shop"},
		}
		writeJSON(w, http.StatusOK, map[string]any{
			"slots":    slots,
			"tracking": map[string]any{"impression_id": fmt.Sprintf("imp-%x", rnd.Uint64()), "user": user, "segment": topics[rnd.IntN(len(topics))]},
		})
	})
	return mux
}

// Analytics serves POST /events: accepts and counts event batches.
func Analytics(lat Latency) http.Handler {
	var received atomic.Int64
	mux := http.NewServeMux()
	healthz(mux)
	mux.HandleFunc("POST /events", func(w http.ResponseWriter, r *http.Request) {
		lat.wait(r.Context())
		var batch []json.RawMessage
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
		if err := dec.Decode(&batch); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "body must be a JSON array of events"})
			return
		}
		total := received.Add(int64(len(batch)))
		writeJSON(w, http.StatusAccepted, map[string]int64{"accepted": int64(len(batch)), "total": total})
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]int64{"events": received.Load()})
	})
	return mux
}

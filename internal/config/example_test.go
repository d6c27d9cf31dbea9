package config_test

import (
	"errors"
	"fmt"

	"github.com/portico-gw/portico/internal/config"
)

func ExampleLoadBytes() {
	_, err := config.LoadBytes("gateway.yaml", []byte(`version: 1
upstreams:
  posts:
    targets: [{url: "http://127.0.0.1:7002"}]
    balanse: random
routes:
  - name: posts
    match: {path: "/posts/{id}"}
    upstream: post
`))
	fmt.Println(err)

	// Each problem is also available as a value.
	var errs *config.Errors
	if errors.As(err, &errs) {
		fmt.Println(len(errs.List), errs.List[0].Line, errs.List[0].Field)
	}
	// Output:
	// gateway.yaml:5:5: upstreams.posts.balanse: unknown key "balanse" (did you mean "balance"?)
	// gateway.yaml:7:5: routes[0]: needs auth or public: true (neither is set)
	// gateway.yaml:9:5: routes[0].upstream: unknown upstream "post"
	// 3 5 upstreams.posts.balanse
}

func ExampleConfig_Where() {
	cfg, err := config.LoadBytes("gateway.yaml", []byte(`version: 1
server:
  tls: {cert: /etc/portico/gw.crt, key: /etc/portico/gw.key}
upstreams:
  posts:
    targets: [{url: "http://127.0.0.1:7002"}]
routes:
  - {name: posts, match: {path: /posts/*}, upstream: posts, public: true}
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	// A later stage that cannot read the certificate names its position.
	fmt.Println(cfg.Where("server.tls.cert"))
	fmt.Println(cfg.Where("routes[0].timeout")) // not written: the route's position
	// Output:
	// gateway.yaml:3:9
	// gateway.yaml:8:5
}

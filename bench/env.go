package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// env holds what every scenario shares: the work directory, the upstream
// process, the built portico binary, nginx when installed.
type env struct {
	work         string
	upstream     *proc
	upAddr       string
	portico      string // binary path
	nginx        string // binary path, "" when not installed
	nginxVersion string
	machine      machine
	porticoEnv   []string // -portico-env
}

func newEnv(ctx context.Context, work string) (*env, error) {
	e := &env{work: work, machine: readMachine()}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	up, err := startProc(ctx, "upstream", filepath.Join(work, "upstream.log"), []string{"GOMAXPROCS=2"}, self, "upstream", "-addr", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e.upstream = up
	// The upstream prints its address as its first line.
	addr, err := firstLine(filepath.Join(work, "upstream.log"), 5*time.Second)
	if err != nil {
		up.stop()
		return nil, fmt.Errorf("upstream: %w", err)
	}
	e.upAddr = addr
	if err := waitHTTP(ctx, "http://"+addr+"/small", 5*time.Second); err != nil {
		e.close()
		return nil, err
	}

	fmt.Println("building portico")
	e.portico = filepath.Join(work, "portico")
	build := exec.CommandContext(ctx, "go", "build", "-o", e.portico, "./cmd/portico")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		e.close()
		return nil, fmt.Errorf("build portico: %w", err)
	}
	if p, err := exec.LookPath("nginx"); err == nil {
		e.nginx = p
		if out, err := exec.Command(p, "-v").CombinedOutput(); err == nil {
			e.nginxVersion = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "nginx version: "))
		}
	} else {
		fmt.Println("nginx not installed (apt-get install nginx-light): ratios to nginx are left out")
	}
	return e, nil
}

func (e *env) close() { e.upstream.stop() }

func firstLine(path string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		f, err := os.Open(path)
		if err == nil {
			sc := bufio.NewScanner(f)
			if sc.Scan() && strings.TrimSpace(sc.Text()) != "" {
				f.Close()
				return strings.TrimSpace(sc.Text()), nil
			}
			f.Close()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "", fmt.Errorf("no address printed within %s", timeout)
}

// system is one thing under load: its base URL and, for proxies, its
// process (for CPU and memory).
type system struct {
	name string
	base string
	proc *proc
}

// lineup starts portico with yaml and, when installed, nginx with a
// keep-alive pool of conns, beside the direct upstream: the three systems
// most scenarios compare. On error nothing is left running; the caller
// stops the others with stopAll.
func (e *env) lineup(ctx context.Context, tag, yaml string, conns int, tls *tlsFiles) (direct, ng, pt *system, err error) {
	pt, err = e.startPortico(ctx, tag, yaml)
	if err != nil {
		return nil, nil, nil, err
	}
	ng, err = e.startNginx(ctx, conns, tls)
	if err != nil {
		pt.stop()
		return nil, nil, nil, err
	}
	return &system{name: "direct", base: "http://" + e.upAddr}, ng, pt, nil
}

// stop ends the system's process; nil systems and the direct call (no
// process) are fine.
func (s *system) stop() {
	if s != nil && s.proc != nil {
		s.proc.stop()
	}
}

func stopAll(systems ...*system) {
	for _, s := range systems {
		s.stop()
	}
}

// startPortico runs portico with config yaml; it returns once /readyz answers.
func (e *env) startPortico(ctx context.Context, tag, yaml string) (*system, error) {
	pub, err := freePort()
	if err != nil {
		return nil, err
	}
	adm, err := freePort()
	if err != nil {
		return nil, err
	}
	yaml = strings.ReplaceAll(yaml, "$PUBLIC", pub)
	yaml = strings.ReplaceAll(yaml, "$ADMIN", adm)
	yaml = strings.ReplaceAll(yaml, "$UPSTREAM", e.upAddr)
	cfg, err := writeFile(e.work, "portico-"+tag+".yaml", yaml)
	if err != nil {
		return nil, err
	}
	p, err := startProc(ctx, "portico", filepath.Join(e.work, "portico-"+tag+".log"), e.porticoEnv, e.portico, "run", "-c", cfg)
	if err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, "http://"+adm+"/readyz", 10*time.Second); err != nil {
		p.stop()
		log, _ := os.ReadFile(filepath.Join(e.work, "portico-"+tag+".log"))
		return nil, fmt.Errorf("portico did not start: %v\n%s", err, log)
	}
	scheme := "http://"
	if strings.Contains(yaml, "tls:") {
		scheme = "https://"
	}
	return &system{name: "portico", base: scheme + pub, proc: p}, nil
}

// startNginx runs nginx as a reverse proxy to the upstream: one worker per
// core, a keep-alive upstream pool as large as the client connections,
// access log off.
func (e *env) startNginx(ctx context.Context, conns int, tls *tlsFiles) (*system, error) {
	if e.nginx == "" {
		return nil, nil
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(e.work, "nginx-"+strings.ReplaceAll(port, ":", "-"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;"
	}
	listen := "listen " + port + ";"
	scheme := "http://"
	if tls != nil {
		listen = fmt.Sprintf("listen %s ssl http2;\n    ssl_certificate %s;\n    ssl_certificate_key %s;", port, tls.cert, tls.key)
		scheme = "https://"
	}
	conf := fmt.Sprintf(`%s
worker_processes %d;
worker_rlimit_nofile 20000;
pid %[3]s/nginx.pid;
error_log %[3]s/error.log warn;
daemon off;
events { worker_connections 16384; }
http {
  access_log off;
  sendfile on;
  tcp_nodelay on;
  keepalive_requests 1000000;
  client_body_temp_path %[3]s/body;
  proxy_temp_path %[3]s/proxy;
  upstream backend { server %[4]s; keepalive %[5]d; keepalive_requests 1000000; }
  server {
    %[6]s
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`, user, e.machine.cores, dir, e.upAddr, conns, listen)
	cfg, err := writeFile(dir, "nginx.conf", conf)
	if err != nil {
		return nil, err
	}
	p, err := startProc(ctx, "nginx", filepath.Join(dir, "stdout.log"), nil, e.nginx, "-c", cfg, "-p", dir)
	if err != nil {
		return nil, err
	}
	if tls == nil {
		if err := waitHTTP(ctx, "http://"+port+"/small", 5*time.Second); err != nil {
			p.stop()
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			return nil, fmt.Errorf("nginx did not start: %v\n%s", err, log)
		}
	} else {
		time.Sleep(500 * time.Millisecond)
	}
	return &system{name: "nginx", base: scheme + port, proc: p}, nil
}

// measure runs a warm-up and a measured wrk run against url and turns it
// into a sample with the proxy's CPU and memory.
func measure(ctx context.Context, s *system, url string, conns int, o options, headers []string, script string) (sample, error) {
	if o.warmup > 0 {
		if _, err := runWrk(ctx, url, conns, o.warmup, headers, script); err != nil {
			return sample{}, err
		}
		time.Sleep(300 * time.Millisecond)
	}
	var cpu0 float64
	if s.proc != nil {
		cpu0 = s.proc.cpu()
	}
	r, err := runWrk(ctx, url, conns, o.duration, headers, script)
	if err != nil {
		return sample{}, err
	}
	out := sample{rps: r.rps, p50ms: ms(r.p50), p99ms: ms(r.p99), errors: r.errors}
	if s.proc != nil && r.requests > 0 {
		out.setCPU(s.proc.cpu()-cpu0, r.requests)
		out.rssMiB = s.proc.rssMiB()
	}
	time.Sleep(500 * time.Millisecond)
	return out, nil
}

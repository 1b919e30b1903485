// nginx as the floor of any proxy: one worker (Node is one thread too), keep-alive to the
// upstream, no buffering of responses, HTTP/1.1 both ways. Config, pid and logs live in a temp
// dir; nginx runs in the foreground as our child.
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { start, waitHttp } from './children.js'

export const NGINX = process.env.BENCH_NGINX ?? '/usr/sbin/nginx'

export function nginxAvailable () { return existsSync(NGINX) }

export function nginxConfig ({ dir, port, upstreamPort }) {
  return `daemon off;
master_process on;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  upstream openrouter {
    server 127.0.0.1:${upstreamPort};
    keepalive 256;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://openrouter;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 300s;
    }
  }
}
`
}

/** Starts nginx on `port`; resolves with the child once it answers. */
export async function startNginx ({ tmp, port, upstreamPort }) {
  const dir = join(tmp, 'nginx')
  mkdirSync(dir, { recursive: true })
  const conf = join(dir, 'nginx.conf')
  writeFileSync(conf, nginxConfig({ dir, port, upstreamPort }))
  const child = start('nginx', NGINX, ['-p', dir, '-c', conf, '-e', join(dir, 'error.log')], { logPath: join(dir, 'stdout.log') })
  // Any path reaches the upstream; its 404 for GET / proves the whole chain answers.
  await waitHttp(`http://127.0.0.1:${port}/healthz`, { status: 404, child })
  return child
}

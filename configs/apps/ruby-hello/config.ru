# The example's Ruby app: a plain Rack app, no gem but Rack (Debian: ruby-rack).
PAGE = <<~HTML
  <!DOCTYPE html>
  <title>passenger-lite: Ruby</title>
  <h1>Hello from Ruby %s</h1>
  <p>Worker pid %d (Rack %s), mounted at <code>%s</code>, path <code>%s</code>.</p>
HTML

run(lambda do |env|
  body = format(PAGE, RUBY_VERSION, Process.pid, Rack.release, env["SCRIPT_NAME"].empty? ? "/" : env["SCRIPT_NAME"],
                env["PATH_INFO"])
  [200, { "content-type" => "text/html; charset=utf-8", "content-length" => body.bytesize.to_s }, [body]]
end)

# A plain Rack app for the tests: echoes what it was given; no gem but Rack.
require "digest"
require "json"

ECHO_ENV = %w[SCRIPT_NAME PATH_INFO QUERY_STRING REQUEST_METHOD SERVER_NAME REMOTE_ADDR rack.url_scheme].freeze
ECHO_VARS = /\A(PASSENGER|RACK_ENV|RAILS_ENV|RAILS_RELATIVE_URL_ROOT|BUNDLE_GEMFILE|TEST_)/

def json_response(data)
  body = JSON.generate(data)
  [200, { "content-type" => "application/json", "content-length" => body.bytesize.to_s }, [body]]
end

run(lambda do |env|
  case env["PATH_INFO"]
  when "/env"
    data = ECHO_ENV.to_h { |k| [k, env[k]] }
    data["headers"] = env.select { |k, _| k.start_with?("HTTP_") }.transform_keys { |k| k[5..] }
    data["env"] = ENV.select { |k, _| k =~ ECHO_VARS }
    data["pid"] = Process.pid
    data["bundler"] = defined?(Bundler) ? true : false
    data["threads"] = ENV["PASSENGER_LITE_CONCURRENCY"]
    json_response(data)
  when "/echo"
    digest = Digest::SHA256.new
    length = 0
    input = env["rack.input"]
    while (chunk = input.read(65_536))
      digest << chunk
      length += chunk.bytesize
    end
    json_response("length" => length, "sha256" => digest.hexdigest)
  when "/pid"
    [200, { "content-type" => "text/plain" }, [Process.pid.to_s]]
  when "/stream"
    n = (Rack::Utils.parse_query(env["QUERY_STRING"])["n"] || "3").to_i
    [200, { "content-type" => "text/plain" }, Enumerator.new { |y| n.times { |i| y << "part #{i}\n" } }]
  else
    [200, { "content-type" => "text/plain", "content-length" => "16" }, ["hello from rack\n"]]
  end
end)

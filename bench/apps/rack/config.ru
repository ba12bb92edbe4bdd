# Hello-world Rack app of the bench (passenger-lite's ruby-rack spawner and Passenger).
# Copied from /work/shared/anchors/apps/rack/config.ru.
HELLO = "Hello, World!\n".freeze
run lambda { |env| [200, { "content-type" => "text/plain", "content-length" => HELLO.bytesize.to_s }, [HELLO]] }

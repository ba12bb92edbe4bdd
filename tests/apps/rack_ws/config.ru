# WebSocket echo for passenger-lite's tests, on plain Rack: puma's full hijack and a small
# RFC 6455 frame loop (no gem beyond what Debian ships with Ruby, Rack and Puma).
# Text "close" makes the server close with 4001; "pid" answers the pid; binary messages come
# back unchanged. GET .../last-close tells the last close code a client sent.
require "digest/sha1"
require "base64"
require "json"

module WsEcho
  GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
  @last_close = nil
  class << self
    attr_accessor :last_close
  end

  def self.frame(opcode, payload)
    payload = payload.b
    n = payload.bytesize
    head = [0x80 | opcode].pack("C")
    head << (n < 126 ? [n].pack("C") : n < 65_536 ? [126, n].pack("Cn") : [127, n].pack("CQ>"))
    head + payload
  end

  def self.unmask(mask, data)
    m = mask.unpack1("N")
    whole = data.bytesize / 4 * 4
    out = data.byteslice(0, whole).unpack("N*").map { |w| w ^ m }.pack("N*")
    data.byteslice(whole, data.bytesize - whole).bytes.each_with_index { |b, i| out << (b ^ mask.getbyte(i)).chr }
    out
  end

  def self.read_frame(io)
    b0, b1 = io.read(2)&.unpack("CC")
    return nil if b1.nil?
    n = b1 & 0x7F
    n = io.read(2).unpack1("n") if n == 126
    n = io.read(8).unpack1("Q>") if n == 127
    mask = (b1 & 0x80).zero? ? nil : io.read(4)
    data = n.zero? ? "".b : io.read(n)
    return nil if data.nil? || data.bytesize < n
    [b0 & 0x80 != 0, b0 & 0x0F, mask ? unmask(mask, data) : data]
  end

  def self.serve(io)
    message = nil
    kind = nil
    while (f = read_frame(io))
      fin, opcode, data = f
      case opcode
      when 0x8
        code = data.bytesize >= 2 ? data.unpack1("n") : 1005
        WsEcho.last_close = { "code" => code, "reason" => data.byteslice(2..).to_s }
        io.write(frame(0x8, data.byteslice(0, 2).to_s))
        break
      when 0x9 then io.write(frame(0xA, data))
      when 0xA then next
      else
        if opcode != 0
          kind = opcode
          message = data
        else
          message << data
        end
        next unless fin
        if kind == 0x2
          io.write(frame(0x2, message))
        elsif message == "close"
          io.write(frame(0x8, [4001].pack("n") + "asked to"))
        elsif message == "pid"
          io.write(frame(0x1, Process.pid.to_s))
        else
          io.write(frame(0x1, "echo: ".b + message))
        end
      end
    end
  rescue IOError, SystemCallError
    nil
  ensure
    io.close unless io.closed?
  end

  def self.call(env)
    if env["HTTP_UPGRADE"].to_s.downcase == "websocket" && env["rack.hijack"]
      accept = Base64.strict_encode64(Digest::SHA1.digest(env["HTTP_SEC_WEBSOCKET_KEY"].to_s + GUID))
      env["rack.hijack"].call
      io = env["rack.hijack_io"]
      io.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" \
               "Sec-WebSocket-Accept: #{accept}\r\n\r\n")
      Thread.new { serve(io) }
      return [200, {}, []]
    end
    if env["PATH_INFO"].end_with?("/last-close")
      return [200, { "content-type" => "application/json" }, [JSON.generate(WsEcho.last_close)]]
    end
    [200, { "content-type" => "text/plain" }, ["hello from rack ws\n"]]
  end
end

run WsEcho

# A plain WebSocket echo (text back as text, binary as binary) on Rack with Puma's full hijack and an
# RFC 6455 frame loop (fragments, control frames, close codes, UTF-8 checks), for the Autobahn
# fuzzingclient (integration/peers/test_autobahn.py), through passenger-lite and directly (puma).
require "digest/sha1"
require "base64"

module AutobahnEcho
  GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
  CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011].freeze

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

  def self.read(io, n)
    data = io.read(n)
    raise EOFError if data.nil? || data.bytesize < n
    data
  end

  def self.read_frame(io)
    b0, b1 = read(io, 2).unpack("CC")
    n = b1 & 0x7F
    n = read(io, 2).unpack1("n") if n == 126
    n = read(io, 8).unpack1("Q>") if n == 127
    mask = (b1 & 0x80).zero? ? nil : read(io, 4)
    data = n.zero? ? "".b : read(io, n)
    [b0 & 0x80 != 0, (b0 >> 4) & 0x7, b0 & 0x0F, mask ? unmask(mask, data) : data]
  end

  # Send the close frame, then read until the client closes too (a lingering close: closing at once
  # while the client still sends would make the kernel reset the connection, losing the frame).
  def self.close(io, payload)
    io.write(frame(0x8, payload))
    io.close_write
    deadline = Time.now + 5
    while Time.now < deadline && IO.select([io], nil, nil, deadline - Time.now)
      io.read_nonblock(65_536)
    end
  rescue IOError, SystemCallError
    nil
  end

  def self.utf8?(s)
    s.dup.force_encoding(Encoding::UTF_8).valid_encoding?
  end

  def self.serve(io)
    message = nil
    kind = nil
    loop do
      fin, rsv, opcode, data = read_frame(io)
      return close(io, [1002].pack("n")) if rsv != 0 || ![0, 1, 2, 8, 9, 10].include?(opcode)
      if opcode >= 8
        return close(io, [1002].pack("n")) if !fin || data.bytesize > 125
        if opcode == 0x8
          if data.bytesize >= 2
            code = data.unpack1("n")
            ok = CLOSE_CODES.include?(code) || (3000..4999).cover?(code)
            return close(io, [1002].pack("n")) unless ok
            return close(io, [1007].pack("n")) unless utf8?(data.byteslice(2..))
            return close(io, data.byteslice(0, 2))
          end
          return close(io, data.empty? ? "" : [1002].pack("n"))
        end
        io.write(frame(0xA, data)) if opcode == 0x9
        next
      end
      if opcode.zero?
        return close(io, [1002].pack("n")) if message.nil?
        message << data
      else
        return close(io, [1002].pack("n")) unless message.nil?
        kind = opcode
        message = data.dup
      end
      next unless fin
      return close(io, [1007].pack("n")) if kind == 0x1 && !utf8?(message)
      io.write(frame(kind, message))
      message = nil
    end
  rescue IOError, SystemCallError
    nil
  ensure
    begin
      io.close unless io.closed?
    rescue IOError, SystemCallError
      nil
    end
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
    [200, { "content-type" => "text/plain" }, ["ws echo (rack)\n"]]
  end
end

run AutobahnEcho
